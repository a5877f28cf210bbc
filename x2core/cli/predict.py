"""``x2vlm predict MODEL --task TASK --image FILE [--text "..."]``: a trained model on raw files.

MODEL is any form :func:`x2core.model.artifact.resolve` accepts (model directory, run
directory, checkpoint, ``latest`` pointer). Tasks (:class:`x2core.Predictor`):

* ``similarity``: ITC cosine of every image (or ``--video``) with every ``--text``;
* ``match``: ITM probability of every (image or video, text) pair;
* ``ground``: one box per ``--text`` in each image's own pixels (``--draw OUT.png``);
* ``caption``: a caption per image (a ``captioning`` head);
* ``vqa``: each ``--text`` is a question about each image / video, top ``--top-k`` answers
  (a ``vqa`` / ``vqa-cls`` head; ``video-qa`` for videos);
* ``classify``: zero-shot over ``--labels`` with ``--template`` prompts, or without labels
  the ``classification`` head.
"""
from __future__ import annotations

TASKS = ("similarity", "match", "ground", "caption", "vqa", "classify")


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="model directory, run directory, checkpoint file or checkpoints/latest")
    parser.add_argument("--task", required=True, choices=TASKS, help="what to predict")
    parser.add_argument("--image", action="append", default=[], metavar="FILE",
                        help="an image file (JPEG, PNG, WebP, ...); repeat for several")
    parser.add_argument("--video", action="append", default=[], metavar="FILE",
                        help="a video file or a folder of frames (similarity, match, vqa); repeat for several")
    parser.add_argument("--text", action="append", default=[], metavar="TEXT",
                        help="a caption, query or question; repeat for several")
    parser.add_argument("--labels", metavar="A,B,C", help="classify: comma-separated class names (zero-shot)")
    parser.add_argument("--template", action="append", dest="templates", metavar="PROMPT",
                        help="classify: a prompt with {} for the label (repeat; default: "
                             "'a photo of a {}' and two more)")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="answers / labels to list (default 5)")
    parser.add_argument("--draw", metavar="OUT.png",
                        help="ground: write the (first) image with its boxes to this PNG")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="inputs per forward pass")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--output", metavar="FILE", help="also write the JSON results to FILE")


def _need(args, *, image=False, visual=False, text=False) -> None:
    from x2core.errors import InputError

    task = args.task
    if image and args.video:
        raise InputError(f"--task {task} takes images, not --video")
    if (image or visual) and not (args.image or args.video):
        raise InputError(f"--task {task} needs --image FILE" + (" or --video FILE" if visual else ""))
    if visual and args.image and args.video:
        raise InputError(f"--task {task}: give --image or --video, not both")
    if text and not args.text:
        raise InputError(f"--task {task} needs --text" + (' "a question"' if task == "vqa" else ' "..."'))


def predict(args, predictor) -> dict:
    """The task's results as a JSON-ready dict (the same for --json and the table)."""
    from x2core.errors import InputError

    task = args.task
    if args.draw and task != "ground":
        raise InputError("--draw goes with --task ground")
    if task in ("similarity", "match"):
        _need(args, visual=True, text=True)
        kind = "video" if args.video else "image"
        items = args.video or args.image
        fn = predictor.similarity if task == "similarity" else predictor.match
        scores = fn(texts=args.text, **{f"{kind}s": items})
        return {"task": task, kind + "s": items, "texts": args.text, "scores": scores.tolist()}
    if task == "ground":
        _need(args, image=True, text=True)
        results = [{"image": img, "boxes": [{"text": t, "box": b} for t, b in
                                             zip(args.text, predictor.ground(img, args.text))]}
                   for img in args.image]
        out = {"task": task, "box_format": "x, y, w, h in pixels of the image", "results": results}
        if args.draw:
            first = results[0]
            out["drawn"] = predictor.draw(first["image"], args.text, [b["box"] for b in first["boxes"]],
                                          args.draw)
        return out
    if task == "caption":
        _need(args, image=True)
        return {"task": task, "results": [{"image": i, "caption": c} for i, c in
                                          zip(args.image, predictor.caption(args.image))]}
    if task == "vqa":
        _need(args, visual=True, text=True)
        kind = "video" if args.video else "image"
        results = []
        for item in args.video or args.image:
            answers = predictor.vqa(question=list(args.text), top_k=args.top_k, **{kind: item})
            results += [{kind: item, "question": q, **a} for q, a in zip(args.text, answers)]
        return {"task": task, "results": results}
    _need(args, image=True)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    if args.labels is not None and not labels:
        raise InputError("--labels has no class names (give them comma-separated: cat,dog)")
    kwargs = {"templates": args.templates} if args.templates else {}
    ranked = predictor.classify(args.image, labels, top_k=args.top_k, **kwargs)
    return {"task": task, "mode": "zero-shot" if labels else "classification head",
            "results": [{"image": i, **r} for i, r in zip(args.image, ranked)]}


def _short(text: str, n: int = 24, *, tail: bool = False) -> str:
    """At most ``n`` characters; a path keeps its end (the file name)."""
    if len(text) <= n:
        return text
    return "…" + text[1 - n:] if tail else text[:n - 1] + "…"


def print_table(out: dict) -> None:
    task = out["task"]
    if task in ("similarity", "match"):
        kind = "videos" if "videos" in out else "images"
        names = [_short(x, 32, tail=True) for x in out[kind]]
        texts = [_short(t) for t in out["texts"]]
        w = max(len(n) for n in names + [kind[:-1]])
        cols = [max(len(t), 7) for t in texts]
        print(f"{kind[:-1]:<{w}}  " + "  ".join(f"{t:>{c}}" for t, c in zip(texts, cols)))
        for name, row in zip(names, out["scores"]):
            print(f"{name:<{w}}  " + "  ".join(f"{v:>{c}.4f}" for v, c in zip(row, cols)))
        print(f"({'ITC cosine similarity' if task == 'similarity' else 'ITM match probability'})")
    elif task == "ground":
        for r in out["results"]:
            print(r["image"])
            for b in r["boxes"]:
                x, y, bw, bh = b["box"]
                print(f"  {b['text']}: x={x:.1f} y={y:.1f} w={bw:.1f} h={bh:.1f}")
        if out.get("drawn"):
            print(f"boxes drawn to {out['drawn']}")
    elif task == "caption":
        for r in out["results"]:
            print(f"{r['image']}: {r['caption']}")
    elif task == "vqa":
        for r in out["results"]:
            where = r.get("image", r.get("video"))
            others = ", ".join(f"{a['answer']} {a['score']:.3f}" for a in r["top_k"])
            print(f"{where}: {r['question']} -> {r['answer']}  ({others})")
    else:
        for r in out["results"]:
            others = ", ".join(f"{a['label']} {a['score']:.3f}" for a in r["top_k"])
            print(f"{r['image']}: {r['label']}  ({others})")


def run(args) -> int:
    from x2core.cli.conventions import emit_json
    from x2core.errors import InputError
    from x2core.predict.predictor import Predictor

    if args.top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {args.top_k}")
    predictor = Predictor.from_pretrained(args.model, device=args.device, batch_size=args.batch_size)
    out = predict(args, predictor)
    if not emit_json(args, out):
        print_table(out)
    return 0

"""First-party domain heads: ``retrieval``, ``vqa`` (generative answer ranking) and
``vqa-cls``, ``nlvr2``, ``grounding``, ``captioning``, ``classification``,
``video-retrieval``, ``video-qa``.

``x2plugins.heads.builtin`` registers them through ``x2vlm_register_heads`` exactly as a
third-party plugin would; each implementation module is imported only when its head is
built.
"""

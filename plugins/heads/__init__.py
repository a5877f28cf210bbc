"""First-party domain heads, one plugin module each (registered like third-party heads).

``retrieval``, ``vqa`` (generative answer ranking) and ``vqa-cls``, ``nlvr2``,
``grounding``, ``captioning``, ``classification``. Importing this package imports
nothing heavy; each module registers through ``x2vlm_register_heads``.
"""

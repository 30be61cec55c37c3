"""Issue 17, items 4 and 5: settings and data are checked before any model is built or curvature file read,
each message naming the speaker, the folder or file and the reason; the phoneme cache lives in the user
cache folder, never in the corpus."""

from __future__ import annotations

import pytest
from fault_helpers import RECIPES, finetune
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tts_bpeft.styletts2.finetune import run_finetuning

NOT_BUILT = "model.checkpoint=/no/such/checkpoint.pth"  # a model build would fail on this first


def settings(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(RECIPES / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("finetune", overrides=[NOT_BUILT, *overrides]), resolve=True)


def test_an_unknown_speaker_is_named_with_the_corpus_and_its_speakers(tmp_path, vctk_root):
    junk = tmp_path / "curvature.safetensors"
    junk.write_bytes(b"not a curvature file")  # would fail if it were read before the data
    done = finetune(f"data.vctk_root={vctk_root}", "speaker=p999", NOT_BUILT, "prior=kfac", f"prior.curvature={junk}",
                    f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode != 0
    assert (f"speaker=p999: it is neither in {vctk_root / 'speaker-info.txt'} nor a folder of "
            f"{vctk_root / 'wav48_silence_trimmed'}; speakers there: p248, p315") in done.stderr


def test_a_speaker_without_transcripts_is_named_with_the_missing_folder(tmp_path, vctk_root):
    with pytest.raises(ValueError, match=rf"speaker=p315: it has no transcripts \(no folder {vctk_root}/txt/p315\)"):
        run_finetuning(settings(f"data.vctk_root={vctk_root}", "speaker=p315"), tmp_path)


def test_too_few_utterances_for_the_held_out_splits_is_explained(tmp_path, vctk_root):
    with pytest.raises(ValueError, match=r"speaker=p248: its 5 usable utterances .* all went to the held-out splits "
                                         r"\(data.test_utterances=20, data.val_utterances=5\); lower them"):
        run_finetuning(settings(f"data.vctk_root={vctk_root}"), tmp_path)


def test_an_unset_value_is_refused_before_anything_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"settings \['data.vctk_root'\] are not set \(\?\?\?\); give them on the "
                                         r"command line, e.g. data.vctk_root=..."):
        run_finetuning(settings(), tmp_path)


@pytest.mark.parametrize(("override", "message"), [
    ("prior.lam=-1000", r"prior lam = -1000"), ("prior.lam=nan", r"prior lam = nan"),
    ("optim.lr=-0.1", r"optim.lr = -0.1"), ("optim.epochs=0", r"training setting epochs = 0"),
    ("optim.batch_size=0", r"optim.batch_size = 0"), ("data.vctk_root=/no/such/corpus", r"data.vctk_root=/no/such"),
])
def test_bad_numbers_and_paths_are_refused_at_start_up(tmp_path, vctk_root, override, message):
    cfg = settings(f"data.vctk_root={vctk_root}", "prior=l2sp", override)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_finetuning(cfg, tmp_path)
    assert not (tmp_path / "run.json").exists()


def test_a_missing_curvature_file_is_named_before_the_model_is_built(tmp_path, vctk_root):
    cfg = settings(f"data.vctk_root={vctk_root}", "prior=kfac", f"prior.curvature={tmp_path / 'absent.safetensors'}")
    with pytest.raises(FileNotFoundError, match=rf"prior.curvature={tmp_path}/absent.safetensors: no such curvature"):
        run_finetuning(cfg, tmp_path)


def test_the_default_phoneme_cache_is_in_the_user_cache_folder(tmp_path, monkeypatch):
    from tts_bpeft.speech_data.phonemes import default_cache

    monkeypatch.setenv("TTS_BPEFT_CACHE", str(tmp_path / "mine"))
    assert default_cache() == tmp_path / "mine" / "phonemes.json"
    monkeypatch.delenv("TTS_BPEFT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache() == tmp_path / "xdg" / "tts_bpeft" / "phonemes.json"

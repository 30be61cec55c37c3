"""`make demo`: adapt a multi-speaker StyleTTS 2 to a new voice with LoRA, with and without the Bayesian
prior, and show what each system gained on the target voice and lost on the voices it knew.

Stages (each cached under ``out_dir``; a rerun reuses what is done):

1. corpora: a LibriTTS-layout "pre-training" corpus and a VCTK-layout target + unseen-speaker corpus,
   spoken by local synthesizers, speakers disjoint across the sets;
2. pre-training: the smallest real StyleTTS 2 build trained briefly from scratch on the pre-training
   corpus (the ``full`` system of the fine-tuning code), saved as an official checkpoint;
3. curvature: KFAC and EWC of the pre-trained model on pre-training utterances (the recipe's code);
4. fine-tuning on the target speaker p248 with LoRA under each prior (the recipe's code);
5. evaluation: held-out pre-training loss (forgetting), zero-shot speaker similarity to the target and to
   unseen speakers (SpeechBrain ECAPA when it can be had, else resemblyzer), a table, CSV/JSON, a trade-off
   plot and wavs.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tts_bpeft.curvature import Curvature
from tts_bpeft.eval.report import describe_backend
from tts_bpeft.eval.speaker import load_speaker_encoder
from tts_bpeft.eval.speaker_sets import TargetSplit, build_test_sets
from tts_bpeft.eval.systems import SystemSpec, pretrained_system, run_system
from tts_bpeft.eval.zero_shot import evaluate_zero_shot
from tts_bpeft.family import DataOptions, Synthesizer, TTSModel, estimate_pretraining_curvature, family
from tts_bpeft.io import save_json, write_text
from tts_bpeft.quiet import silence_known_warnings
from tts_bpeft.runs import load_run, read_run
from tts_bpeft.selection import equal_cost_lam
from tts_bpeft.speech_data.libritts import read_libritts
from tts_bpeft.speech_data.phonemes import Phonemizer
from tts_bpeft.speech_data.selection import split_per_speaker
from tts_bpeft.speech_data.synthesizers import SynthesizerVoice, available_voices
from tts_bpeft.speech_data.synthetic import make_libritts, make_vctk
from tts_bpeft.styletts2.finetune import heldout_loss, run_finetuning, target_splits

TARGET = "p248"
UNSEEN = ("p225", "p302", "p347", "p234", "p326")
STYLETTS2 = family("styletts2")


def stage(name: str) -> None:
    print(f"\n== {name} ==", flush=True)


def choose_voices(pretrain: int, unseen: int
                  ) -> tuple[list[SynthesizerVoice], SynthesizerVoice, list[SynthesizerVoice]]:
    """Disjoint voices: espeak-ng variants pre-train; the target and unseen speakers get the recorded
    flite voices first (festival's slt/kal are flite's slt/kal16, so festival is not used)."""
    voices = [v for v in available_voices() if v.engine != "festival"]
    flite = [v for v in voices if v.engine == "flite"]
    espeak = [v for v in voices if v.engine == "espeak-ng"]
    if len(espeak) < pretrain or len(voices) < pretrain + 1 + unseen:
        raise RuntimeError(f"the demo needs {pretrain + 1 + unseen} distinct voices, found {voices}: "
                           "install espeak-ng and flite (make system-deps)")
    by_gender = {g: [v for v in espeak if v.gender == g] for g in ("F", "M")}
    pre = [by_gender["FM"[k % 2]][k // 2] for k in range(pretrain)]  # F, M, F, M, as speakers.tsv says
    rest = flite + [v for v in espeak if v not in pre]
    target = next((v for v in rest if v.gender == "F"), rest[0])
    others = [v for v in rest if v != target][:unseen]
    return pre, target, others


def make_corpora(cfg: DictConfig, out: Path) -> dict:
    stage("1. corpora (real synthesizers, official layouts)")
    pre, target, unseen = choose_voices(cfg.voices.pretrain, cfg.voices.unseen)
    libri = make_libritts(out / "corpora" / "LibriTTS", speakers=cfg.voices.pretrain,
                          utterances_per_speaker=cfg.voices.pretrain_utterances, voices=pre)
    speakers = [TARGET, *UNSEEN[:cfg.voices.unseen]]
    vctk = make_vctk(out / "corpora" / "VCTK-Corpus-0.92", speakers=speakers,
                     utterances_per_speaker=cfg.voices.target_utterances, voices=[target, *unseen],
                     sentence_offset=200)
    for name, corpus in (("pre-training (LibriTTS layout)", libri), ("target + unseen (VCTK layout)", vctk)):
        state = "cached" if corpus.cached else f"{corpus.wall_seconds:.0f} s"
        print(f"{name}: {corpus.utterances} utterances, {corpus.seconds / 60:.1f} min of speech ({state})")
        for speaker, voice in corpus.voices.items():
            print(f"   {speaker}: {voice}")
    return {"libritts": str(libri.root), "vctk": str(vctk.root), "unseen": speakers[1:]}


def pretrain(cfg: DictConfig, out: Path, corpora: dict, phonemizer: Phonemizer) -> Path:
    stage("2. pre-training the smallest real StyleTTS 2 from scratch")
    checkpoint = out / "pretrained.pth"
    utterances = read_libritts(corpora["libritts"]).utterances
    splits = split_per_speaker(utterances, test=2, seed=cfg.seed)
    if checkpoint.is_file():
        print(f"cached: {checkpoint}")
        return checkpoint
    run_cfg = finetune_config(cfg, corpora, system="full", prior="none", lam=0.0, steps=cfg.pretrain.steps,
                              lr=cfg.pretrain.lr, batch_size=cfg.pretrain.batch_size)
    started = time.time()
    run_finetuning(run_cfg, out / "pretrain", utterances=splits.train)
    model, _ = load_run(out / "pretrain", cfg.device)
    STYLETTS2.export(model, checkpoint)
    parameters = sum(p.numel() for module in model.modules() for p in module.parameters())
    print(f"trained {parameters / 1e6:.0f}M parameters for {cfg.pretrain.steps} steps of "
          f"{cfg.pretrain.batch_size} utterances on {len(splits.train)} utterances of {cfg.voices.pretrain} "
          f"speakers in {time.time() - started:.0f} s -> {checkpoint}")
    return checkpoint


def finetune_config(cfg: DictConfig, corpora: dict, system: str, prior: str, lam: float, steps: int, lr: float,
                    batch_size: int, checkpoint: Path | None = None, curvature: Path | None = None) -> dict:
    """The fine-tuning settings of one demo run: the VCTK recipe's shared groups (``cfg.run``: lora, optim,
    loss) with the demo's choices."""
    run = OmegaConf.to_container(cfg.run, resolve=True)
    run.update(speaker=TARGET, system=system, device=cfg.device, seed=cfg.seed, checkpoint_every=5, progress=True,
               train_utterances=None, amp=False)
    run["model"] = {"config": cfg.model.config, "checkpoint": str(checkpoint) if checkpoint else None, "aux": {}}
    run["data"] = {"vctk_root": corpora["vctk"], "mic": "mic1", "val_utterances": 1,
                   "test_utterances": cfg.evaluate.target_sentences, "trim_db": None,
                   "phoneme_cache": str(Path(corpora["vctk"]).parent / "phonemes.json")}
    run["lora"]["preset"] = cfg.finetune.preset
    run["prior"] = {"kind": prior, "lam": lam, "curvature": str(curvature) if curvature else None,
                    "lam_per_layer": {}, "scaling": "package"}
    run["optim"].update(lr=lr, max_steps=steps, epochs=10_000, batch_size=batch_size)
    run["loss"]["max_frames"] = cfg.max_frames
    return run


def estimate_curvatures(cfg: DictConfig, out: Path, corpora: dict, checkpoint: Path) -> dict[str, Path]:
    stage("3. curvature of the pre-trained model on pre-training data")
    utterances = read_libritts(corpora["libritts"]).utterances
    train = split_per_speaker(utterances, test=2, seed=cfg.seed).train
    chosen = train[:: max(1, len(train) // cfg.curvature.utterances)][: cfg.curvature.utterances]
    files = {}
    for method in cfg.curvature.methods:
        path = out / f"curvature_{method}.safetensors"
        files[method] = path
        if path.is_file():
            print(f"cached: {path}")
            continue
        model = STYLETTS2.build({"config": cfg.model.config, "checkpoint": str(checkpoint)}, cfg.device, cfg.seed)
        STYLETTS2.add_preset(model, cfg.finetune.preset)
        started = time.time()
        options = DataOptions(phoneme_cache=out / "phonemes.json", max_frames=cfg.max_frames)
        curvature = estimate_pretraining_curvature(STYLETTS2, model, chosen, method=method,
                                                   fisher=cfg.curvature.fisher, options=options, seed=cfg.seed)
        curvature.save(path)
        print(f"{method}: {len(curvature.names)} layers from {curvature.samples} utterances in "
              f"{time.time() - started:.0f} s -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return files


def finetune_systems(cfg: DictConfig, out: Path, corpora: dict, checkpoint: Path,
                     curvatures: dict[str, Path]) -> dict[str, Path]:
    """Plain LoRA first; then each prior at equal cost (`tts_bpeft.selection.equal_cost_lam`): ``lam =
    strength / q(dW_plain)``, so every prior costs `strength` (nats of per-utterance loss) at the plain-LoRA
    adapter. One scale for priors whose raw quadratics differ by orders of magnitude."""
    stage(f"4. fine-tuning on the target speaker {TARGET} with LoRA ({cfg.finetune.preset} preset)")
    runs = {}
    for prior in ["none", *[p for p in cfg.finetune.priors if p != "none"]]:
        run_dir = out / "runs" / f"lora_{prior}"
        runs[prior] = run_dir
        if (run_dir / "summary.json").is_file():
            print(f"cached: {run_dir}")
            continue
        lam = 0.0 if prior == "none" else equal_cost(runs["none"], prior, curvatures.get(prior),
                                                     cfg.finetune.strength)
        print(f"-- LoRA + {prior} (lam={lam:.4g})")
        run_cfg = finetune_config(cfg, corpora, "lora", prior, lam, cfg.finetune.steps, cfg.finetune.lr,
                                  cfg.finetune.batch_size, checkpoint, curvatures.get(prior))
        summary = run_finetuning(run_cfg, run_dir)
        print(f"   {summary['steps']} steps in {summary['seconds']:.0f} s, final loss {summary['last']['loss']:.3f}, "
              f"prior term {summary['last']['prior']:.4g}")
    return runs


def equal_cost(plain_run: Path, prior: str, curvature: Path | None, cost: float) -> float:
    """`tts_bpeft.selection.equal_cost_lam` at the adapter of the plain-LoRA run."""
    model, _ = load_run(plain_run)
    return equal_cost_lam(model.net, prior, Curvature.load(curvature, model.net) if curvature else None, cost)


def evaluate(cfg: DictConfig, out: Path, corpora: dict, checkpoint: Path, runs: dict[str, Path],
             phonemizer: Phonemizer) -> list[dict]:
    stage("5. evaluation: forgetting (held-out pre-training loss) and zero-shot speaker similarity")
    model_cfg = {"config": cfg.model.config, "checkpoint": str(checkpoint), "aux": {}}
    systems = [pretrained_system(model_cfg, seed=cfg.seed)]
    systems += [run_system(run_dir, name=f"lora+{prior}") for prior, run_dir in runs.items()]
    heldout = split_per_speaker(read_libritts(corpora["libritts"]).utterances, test=2, seed=cfg.seed).test
    run_cfg = read_run(runs["none"]).settings
    target_test = target_splits(run_cfg["data"], TARGET, None, cfg.seed)[2]  # never trained on
    losses_path = out / "evaluation" / "heldout_loss.json"
    losses = json.loads(losses_path.read_text()) if losses_path.is_file() else {}

    def build(system: SystemSpec) -> TTSModel:
        if system.run_dir is not None:
            return load_run(system.run_dir, cfg.device)[0]
        return STYLETTS2.build(system.model, cfg.device, system.seed)

    built = {}  # a model built for its losses is handed on to synthesis (one build per system)
    for system in systems:
        key = f"{system.name}:{system.fingerprint()}"
        if key not in losses:
            model = built[system.name] = build(system)
            losses[key] = {name: heldout_loss(model.net, model.config, utterances,
                                              terms=list(cfg.evaluate.heldout_terms), phonemizer=phonemizer,
                                              seed=cfg.seed, max_frames=cfg.max_frames)
                           for name, utterances in (("pretraining", heldout), ("target", target_test))}
            save_json(losses, losses_path)
            built = {system.name: model}

    def load(system: SystemSpec) -> Synthesizer:
        model = built.pop(system.name, None) or build(system)
        return STYLETTS2.synthesizer(model, {"max_token_frames": cfg.evaluate.max_token_frames}, device=cfg.device,
                                     seed=cfg.seed, phoneme_cache=out / "phonemes.json")

    test_sets = build_test_sets(corpora["vctk"], TARGET, corpora["unseen"], cfg.evaluate.unseen_sentences,
                                TargetSplit.from_runs(systems), cfg.seed)
    encoder = load_speaker_encoder()  # ECAPA when it can be had, resemblyzer (announced) otherwise
    result = evaluate_zero_shot(systems, test_sets, out / "evaluation", load, encoder,
                                asr_skipped="the demo's toy model does not speak intelligibly; ASR is off",
                                seed=cfg.seed, cache_dir=out / "cache")
    seconds = {f"lora+{p}": json.loads((d / "summary.json").read_text())["seconds"] for p, d in runs.items()}
    table = []
    for system, summary in zip(systems, result.summary):
        key = f"{system.name}:{system.fingerprint()}"
        table.append({"system": system.name, "prior": system.prior, "lam": system.lam,
                      "target_loss": losses[key]["target"], "heldout_loss": losses[key]["pretraining"],
                      "target_SIM": summary["target_SIM"], "unseen_SIM": summary["unseen_SIM"],
                      "finetune_seconds": seconds.get(system.name),
                      "SIM_encoder": describe_backend(result.meta["speaker_encoder"])})
    return table


def report(table: list[dict], out: Path, started: float) -> None:
    stage("results")
    base = table[0]["heldout_loss"]
    lines = [f"{'system':<12} {'lam':>8} {'target loss':>12} {'held-out pre-train loss':>24} {'forgetting':>11} "
             f"{'target SIM':>11} {'unseen SIM':>11} {'time':>6}"]
    for row in table:
        row["forgetting"] = row["heldout_loss"] - base
        lam = "-" if row["lam"] is None else f"{row['lam']:.3g}"
        secs = "-" if row["finetune_seconds"] is None else f"{row['finetune_seconds']:.0f}s"
        lines.append(f"{row['system']:<12} {lam:>8} {row['target_loss']:>12.3f} {row['heldout_loss']:>24.3f} "
                     f"{row['forgetting']:>+11.3f} {row['target_SIM']:>11.3f} {row['unseen_SIM']:>11.3f} {secs:>6}")
    text = "\n".join(lines)
    print(text)
    save_json(table, out / "demo_results.json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    write_text(out / "demo_results.csv", buffer.getvalue())
    plot_forgetting(table, out / "forgetting.png")
    print("\ntarget loss: generator loss on the target speaker's held-out sentences (lower: better adapted); "
          "forgetting: held-out pre-training loss minus the pre-trained model's (lower: less forgotten); SIM: "
          f"cosine similarity of cloned speech to real speech of that speaker ({table[0]['SIM_encoder']}).")
    print("At this toy scale (a ~100M-parameter model pre-trained for minutes on synthetic voices) the audio "
          "is not yet speech and SIM differences are within noise; the held-out loss is the meaningful "
          "forgetting measure here. See README for the real setting.")
    print(f"\noutputs in {out.resolve()}: demo_results.csv/json, forgetting.png, evaluation/ (tradeoff.png, "
          f"summary.md, wavs) -- total {time.time() - started:.0f} s")


def plot_forgetting(table: list[dict], path: Path) -> Path:
    """Held-out pre-training loss (forgetting, y) against the target speaker's held-out loss (x)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    for row in table:
        ax.plot(row["target_loss"], row["heldout_loss"], "*" if row["system"] == "pretrained" else "o",
                markersize=10)
        ax.annotate(row["system"], (row["target_loss"], row["heldout_loss"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("target speaker's held-out loss (lower: better adapted)")
    ax.set_ylabel("held-out pre-training loss (lower: less forgetting)")
    ax.set_title("LoRA adaptation with and without the Laplace prior")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


@hydra.main(version_base="1.3", config_path="conf", config_name="demo")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    started = time.time()
    out = Path(to_absolute_path(cfg.out_dir))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    phonemizer = Phonemizer(out / "phonemes.json")
    corpora = make_corpora(cfg, out)
    checkpoint = pretrain(cfg, out, corpora, phonemizer)
    curvatures = estimate_curvatures(cfg, out, corpora, checkpoint)
    runs = finetune_systems(cfg, out, corpora, checkpoint, curvatures)
    table = evaluate(cfg, out, corpora, checkpoint, runs, phonemizer)
    report(table, out, started)


if __name__ == "__main__":
    main()

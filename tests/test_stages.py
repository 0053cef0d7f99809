"""Each stage on the embedded tiny model, plus resume and LoRA round-trip checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from charloop.core import atomic
from charloop.core.hashing import sha256_file
from charloop.families import get_family
from charloop.models.pipeline import clear_pipeline_cache, load_pipeline, lora_applied
from charloop.params.project import load_project
from charloop.scenes.render import ImageJob, render
from charloop.stages.caption.stage import run_caption
from charloop.stages.contract import MARKER
from charloop.stages.evaluate.stage import run_evaluate
from charloop.stages.filter.stage import NotEnoughImages, run_filter
from charloop.stages.generate.stage import plan_jobs, run_generate
from charloop.stages.results import AdapterRef
from charloop.stages.review.stage import run_review
from charloop.stages.train.stage import TrainingDiverged, run_train
from tests.conftest import FAMILY_IDS, base_model, tiny_params, write_params


@pytest.fixture(scope="module", params=FAMILY_IDS)
def family(request) -> str:
    """Every stage test runs on both embedded families (SD1.5 and SDXL)."""
    return request.param


def params(family: str, **sections):
    """Tiny params on the embedded model of ``family``."""
    return tiny_params(base_model=base_model(family), **sections)


@pytest.fixture(scope="module")
def loop_dir(tmp_path_factory, family):
    return tmp_path_factory.mktemp(f"stages-{family}")


@pytest.fixture(scope="module")
def project(loop_dir, family):
    return load_project(write_params(loop_dir, params(family)))


@pytest.fixture(scope="module")
def outputs(project, loop_dir):
    generated = run_generate(project, 1, None, loop_dir / "gen")
    filtered = run_filter(project, generated, loop_dir / "filt")
    reviewed = run_review(generated, filtered, None, loop_dir / "review")
    dataset = run_caption(project, generated, reviewed, loop_dir / "data")
    adapter = run_train(project, dataset, loop_dir / "adapter", {"iteration": "1"})
    evaluation = run_evaluate(project, adapter, dataset, loop_dir / "eval")
    return {
        "generate": generated,
        "filter": filtered,
        "review": reviewed,
        "caption": dataset,
        "train": adapter,
        "evaluate": evaluation,
    }


def _pipe(project):
    return load_pipeline(
        project.model_ref(project.params.base_model.path), project.params.base_model
    )


def test_generate_writes_manifest_rows_matching_files(outputs, project):
    folder = Path(outputs["generate"].path)
    rows = atomic.read_jsonl(folder / "manifest.jsonl")
    assert len(rows) == 4 * 2 == outputs["generate"].images
    for row in rows:
        assert sha256_file(folder / row["file"]) == row["sha256"]
        assert row["prompt"].startswith("zxq kira")
        assert row["adapter"] is None and row["iteration"] == 1
        assert set(row) >= {"negative_prompt", "seed", "context", "base_model"}
    assert len({r["seed"] for r in rows}) == len(rows)


def test_an_image_regenerates_from_its_manifest_row(outputs, project):
    folder = Path(outputs["generate"].path)
    row = atomic.read_jsonl(folder / "manifest.jsonl")[3]
    job = ImageJob(row["id"], row["prompt"], row["negative_prompt"], row["seed"], row["context"])
    again = np.asarray(render(_pipe(project), [job], project.params.generate)[0], dtype=np.int16)
    original = np.asarray(Image.open(folder / row["file"]), dtype=np.int16)
    assert np.abs(again - original).max() <= 1  # batch of 4 vs batch of 1: float noise only


def test_filter_report_and_kept_rows(outputs):
    folder = Path(outputs["filter"].path)
    report = atomic.read_jsonl(folder / "report.jsonl")
    kept = atomic.read_jsonl(folder / "kept.jsonl")
    assert len(report) == 8
    assert len(kept) == outputs["filter"].kept == sum(r["decision"] == "keep" for r in report)
    assert all(r["reasons"] for r in report if r["decision"] == "reject")


def test_filter_refuses_an_empty_kept_set(project, outputs, family, tmp_path):
    strict = load_project(
        write_params(
            tmp_path,
            params(family, filter={"discriminators": [{"type": "quality", "min_contrast": 0.99}]}),
        )
    )
    with pytest.raises(NotEnoughImages, match="min_kept") as refused:
        run_filter(strict, outputs["generate"], tmp_path / "filt")
    assert "most rejected for: contrast" in str(refused.value)  # the rule that starved it


def test_caption_folder_is_kohya_style(outputs):
    folder = Path(outputs["caption"].path)
    subset = folder / "1_zxq_kira"
    texts = sorted(subset.glob("*.txt"))
    assert len(texts) == outputs["filter"].kept
    for text in texts:
        assert (subset / f"{text.stem}.png").is_file()
        assert text.read_text().startswith("zxq kira, ")
    metadata = atomic.read_jsonl(folder / "metadata.jsonl")
    assert {m["file_name"] for m in metadata} == {f"1_zxq_kira/{t.stem}.png" for t in texts}
    manifest = atomic.read_jsonl(folder / "manifest.jsonl")
    assert all(row["review"]["decided_by"] == "filter" for row in manifest)
    assert all(row["caption"].startswith("zxq kira, ") for row in manifest)
    toml = (folder / "dataset.toml").read_text()
    assert 'image_dir = "1_zxq_kira"' in toml and "keep_tokens = 1" in toml


def test_trained_adapter_loads_and_changes_the_output(outputs, project):
    adapter = Path(outputs["train"].path)
    weights = adapter / "pytorch_lora_weights.safetensors"
    assert sha256_file(weights) == outputs["train"].weights_sha256
    losses = json.loads((adapter / "train_log.json").read_text())["loss"]
    assert len(losses) == 6 and all(np.isfinite(losses))
    pipe = _pipe(project)
    job = plan_jobs(project, 1)[0]
    base = np.asarray(render(pipe, [job], project.params.generate)[0], dtype=np.int16)
    with lora_applied(pipe, adapter):
        with_lora = np.asarray(render(pipe, [job], project.params.generate)[0], dtype=np.int16)
    after = np.asarray(render(pipe, [job], project.params.generate)[0], dtype=np.int16)
    assert np.abs(with_lora - base).max() > 0, "the LoRA must change the image"
    assert np.array_equal(after, base), "the LoRA must be fully removed afterwards"


def test_training_is_reproducible(outputs, project, tmp_path):
    again = run_train(project, outputs["caption"], tmp_path / "again", {"iteration": "1"})
    assert again.weights_sha256 == outputs["train"].weights_sha256


def test_nan_loss_stops_training(outputs, family, tmp_path):
    bad = load_project(
        write_params(
            tmp_path,
            params(family, train={"learning_rate": 1e30, "max_train_steps": 6, "batch_size": 2}),
        )
    )
    with pytest.raises(TrainingDiverged, match="learning_rate"):
        run_train(bad, outputs["caption"], tmp_path / "adapter", {"iteration": "1"})
    assert not (tmp_path / "adapter").exists(), "nothing half-written"


def test_evaluate_writes_metrics_and_contact_sheet(outputs):
    folder = Path(outputs["evaluate"].path)
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in (
        "identity_consistency",
        "base_identity_consistency",
        "prompt_fidelity",
        "nearest_train_similarity",
    ):
        assert -1.0 <= metrics[key] <= 1.0
    assert len(metrics["per_context"]) == 2
    assert metrics["adapter_sha256"] == outputs["train"].weights_sha256
    with Image.open(folder / "contact_sheet.png") as sheet:
        assert sheet.width > 2 * 96 and sheet.height > 2 * 96
    assert len(list((folder / "images").glob("lora-*.png"))) == 2


def test_finished_stages_are_not_redone(outputs, project, loop_dir, monkeypatch):
    import charloop.stages.generate.stage as generate_module

    def explode(*args, **kwargs):
        raise AssertionError("generation must not run again")

    monkeypatch.setattr(generate_module, "render", explode)
    again = run_generate(project, 1, None, loop_dir / "gen")
    assert again == outputs["generate"]
    (Path(again.path) / MARKER).unlink()  # a damaged folder is redone
    with pytest.raises(AssertionError, match="must not run again"):
        run_generate(project, 1, None, loop_dir / "gen")
    monkeypatch.undo()
    # Redone as a resumed run would (a fresh process): other tests have loaded LoRAs into
    # the shared pipeline, and the empty wrappers peft leaves move SDXL's UNet by ~1e-7.
    clear_pipeline_cache()
    assert run_generate(project, 1, None, loop_dir / "gen").digest == outputs["generate"].digest


def test_iteration_two_generates_with_the_previous_adapter(outputs, project, tmp_path):
    adapter = AdapterRef(outputs["train"].path, outputs["train"].weights_sha256)
    second = run_generate(project, 2, adapter, tmp_path / "gen2")
    rows = atomic.read_jsonl(Path(second.path) / "manifest.jsonl")
    assert all(r["adapter"]["sha256"] == adapter.sha256 for r in rows)
    assert all(r["id"].startswith("i002-") for r in rows)


def test_adapter_header_is_sorted_and_carries_provenance(outputs, family):
    from charloop.core.safetensors_header import read_header

    component = get_family(family).denoiser[0]  # 'unet', or FLUX's 'transformer'

    header = read_header(Path(outputs["train"].path) / "pytorch_lora_weights.safetensors")
    metadata = header["__metadata__"]
    assert list(metadata) == sorted(metadata)
    assert metadata["charloop.iteration"] == "1"
    lora_meta = json.loads(metadata["lora_adapter_metadata"])
    targets = lora_meta[f"{component}.target_modules"]
    assert targets == sorted(targets)
    tensors = [k for k in header if k != "__metadata__"]
    assert tensors == sorted(tensors) and all(k.startswith(f"{component}.") for k in tensors)


def test_adapter_bytes_do_not_depend_on_the_process(outputs, loop_dir, tmp_path):
    """Two processes with different hash seeds write byte-identical adapters."""
    import os
    import subprocess
    import sys

    digests = []
    for seed in ("1", "2"):
        out = tmp_path / f"adapter{seed}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "charloop_cli.main",
                "stage",
                "train",
                outputs["caption"].path,
                str(out),
                "--params",
                str(loop_dir / "params.yaml"),
            ],
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
            capture_output=True,
        )
        digests.append(sha256_file(out / "pytorch_lora_weights.safetensors"))
    assert digests[0] == digests[1]


def test_filter_scores_identity_and_prompt_and_draws_a_sheet(outputs):
    folder = Path(outputs["filter"].path)
    report = atomic.read_jsonl(folder / "report.jsonl")
    readable = [r for r in report if "identity" in r["scores"]]
    assert len(readable) == 8
    assert all(
        -1 <= r["scores"]["identity"] <= 1 and -1 <= r["scores"]["prompt"] <= 1 for r in readable
    )
    assert outputs["filter"].identity["anchor"] == "cohesive cluster"
    with Image.open(folder / "contact_sheet.png") as sheet:
        assert sheet.width >= 8 * 64


def test_filter_uses_readable_references_and_reports_skipped_ones(outputs, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    for row in atomic.read_jsonl(Path(outputs["generate"].path) / "manifest.jsonl")[:3]:
        (refs / row["file"]).write_bytes(
            (Path(outputs["generate"].path) / row["file"]).read_bytes()
        )
    (refs / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    data = tiny_params()
    data["character"]["references"] = "refs"
    project = load_project(write_params(tmp_path, data))
    result = run_filter(project, outputs["generate"], tmp_path / "filt")
    assert result.identity == {
        "anchor": "references",
        "references": 3,
        "score": "nearest_references",
    }
    assert result.references_used == 3
    assert "broken.jpg" in result.references_skipped


def test_dinov2_backend_embeds_and_drives_the_identity_check(outputs, tmp_path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from charloop.models.embedder import embed_in_batches, load_embedder
    from charloop.params.filter import IdentityCheck
    from charloop.params.schema import Dinov2Embedder
    from charloop.stages.filter.discriminators import identity_scores

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
    )
    Dinov2Model(config).save_pretrained(tmp_path / "dino")
    BitImageProcessor(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
    ).save_pretrained(tmp_path / "dino")
    embedder = load_embedder(Dinov2Embedder(path=str(tmp_path / "dino")), str(tmp_path / "dino"))
    folder = Path(outputs["generate"].path)
    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
    embeddings = embed_in_batches(embedder, images, batch_size=3)
    assert embeddings.shape == (8, 32)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    assert embedder.embed_texts(["x"]) is None
    scores, info = identity_scores(embeddings, None, IdentityCheck(cluster_divisor=4))
    assert info["clusters"] == 2 and scores.shape == (8,)


def _tiny_controlnet(family: str, ref: str):
    """A ControlNet copied from the tiny base's denoiser, its zero-initialised output
    layers randomised so the control maps visibly steer the images."""
    from diffusers import ControlNetModel, FluxControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    if family == "flux":
        transformer = get_family("flux").load_denoiser(ref, None, torch.float32)
        controlnet = FluxControlNetModel.from_transformer(
            transformer,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=transformer.config.attention_head_dim,
            num_attention_heads=transformer.config.num_attention_heads,
        )
        zeroed = [n for n, _ in controlnet.named_parameters() if n.startswith("controlnet_")]
    else:
        controlnet = ControlNetModel.from_unet(
            UNet2DConditionModel.from_pretrained(ref, subfolder="unet")
        )
        zeroed = [n for n, _ in controlnet.named_parameters()
                  if n.startswith(("controlnet_down_blocks", "controlnet_mid_block"))]  # fmt: skip
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if name in zeroed and name.endswith("weight"):
                param.normal_(0, 0.5)
    return controlnet


def test_controlnet_canny_conditions_generation(outputs, project, family, tmp_path):
    """A tiny ControlNet (from the tiny UNet, non-zero output convs) steers the images
    (through the family's ControlNet pipeline: StableDiffusionXLControlNetPipeline on SDXL)."""
    ref = project.model_ref(project.params.base_model.path)
    controlnet = _tiny_controlnet(family, ref)
    controlnet.save_pretrained(tmp_path / "controlnet")
    poses = tmp_path / "poses"
    poses.mkdir()
    for row in atomic.read_jsonl(Path(outputs["generate"].path) / "manifest.jsonl")[:2]:
        (poses / row["file"]).write_bytes(
            (Path(outputs["generate"].path) / row["file"]).read_bytes()
        )
    (poses / "readme.txt").write_text("not an image")
    data = params(family)
    data["generate"] = {
        **data["generate"],
        "controlnet": {"model": "controlnet", "images": "poses"},
    }
    controlled = load_project(write_params(tmp_path, data))
    result = run_generate(controlled, 1, None, tmp_path / "gen")
    rows = atomic.read_jsonl(Path(result.path) / "manifest.jsonl")
    assert {r["control"]["source"] for r in rows} <= set(p.name for p in poses.glob("*.png"))
    assert all(len(r["control"]["sha256"]) == 64 for r in rows)
    plain = atomic.read_jsonl(Path(outputs["generate"].path) / "manifest.jsonl")
    assert [r["seed"] for r in rows] == [r["seed"] for r in plain]
    assert [r["sha256"] for r in rows] != [r["sha256"] for r in plain]
    # A cast laid out side by side: joint scenes get one control map per character.
    cast = {k: v for k, v in data.items() if k != "character"}
    cast["cast"] = {
        "name": "crew",
        "members": [data["character"], {"name": "milo", "trigger": "vyk milo"}],
        "joint": {"max_prompts": 2, "images_per_prompt": 1},
    }
    cast["generate"] = {**data["generate"], "images_per_prompt": 1}
    crew = load_project(write_params(tmp_path / "crew", cast | {"base_model": data["base_model"]}))
    (tmp_path / "crew" / "poses").symlink_to(poses)
    (tmp_path / "crew" / "controlnet").symlink_to(tmp_path / "controlnet")
    joint = [
        r
        for r in atomic.read_jsonl(
            Path(run_generate(crew, 1, None, tmp_path / "g2").path) / "manifest.jsonl"
        )
        if len(r["characters"]) == 2
    ]
    assert len(joint) == 2 and all("|" in r["control"]["source"] for r in joint)


def test_control_preprocessors_without_weights_and_a_clear_error_with_missing_ones(tmp_path):
    from charloop.params.schema import ControlNetParams
    from charloop.stages.generate.control import control_maps

    poses = tmp_path / "poses"
    poses.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(poses / "a.png")
    lineart = ControlNetParams(model="cn", images="poses", preprocessor="lineart_standard")
    (only,) = control_maps(poses, lineart, 32)
    assert only.image.size == (32, 32) and only.source == "a.png"
    canny = control_maps(poses, ControlNetParams(model="cn", images="poses"), 32)[0]
    assert canny.sha256 != only.sha256
    pose = ControlNetParams(model="cn", images="poses", preprocessor="openpose")
    with pytest.raises(ValueError, match="annotators"):
        control_maps(poses, pose, 32, str(tmp_path / "no-annotators"))


def test_sharded_evaluation_scores_like_one_pass(outputs, project, tmp_path):
    from charloop.stages.evaluate.shards import run_eval_shard

    out = tmp_path / "06_evaluation"
    parts = [run_eval_shard(project, outputs["train"], out, k, 2) for k in range(2)]
    assert sorted(job for p in parts for job in p.jobs) == sorted(
        p.stem.removeprefix("lora-")
        for p in (Path(outputs["evaluate"].path) / "images").glob("lora-*.png")
    )
    sharded = run_evaluate(project, outputs["train"], outputs["caption"], out, parts)
    # Same seeds; shards batch the jobs differently, which moves pixels by float noise only.
    assert sharded.metrics == pytest.approx(outputs["evaluate"].metrics, abs=1e-4)
    for image in (Path(sharded.path) / "images").glob("*.png"):
        a = np.asarray(Image.open(image), dtype=np.int16)
        b = np.asarray(Image.open(Path(outputs["evaluate"].path) / "images" / image.name))
        assert np.abs(a - b.astype(np.int16)).max() <= 2
    assert not any(Path(p.path).exists() for p in parts)  # scratch removed


def test_caption_adds_weighted_reference_art(outputs, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, colour in enumerate(("red", "teal")):
        Image.new("RGB", (96, 80), colour).save(refs / f"art_{i}.png")
    (refs / "notes.txt").write_text("not an image")
    (refs / "art_1.txt").write_text("watercolor, on a beach ,\n")  # kohya-style sidecar
    caption = {"include_traits": True, "include_references": True, "reference_repeats": 3}
    params = tiny_params(caption=caption)
    params["character"]["references"] = str(refs)
    project = load_project(write_params(tmp_path, params))
    dataset = run_caption(project, outputs["generate"], outputs["review"], tmp_path / "data")
    folder = Path(dataset.path)
    rows = atomic.read_jsonl(folder / "metadata.jsonl")
    refs_rows = [r for r in rows if r["id"].startswith("ref-")]
    traits = ", ".join(project.params.character.traits)
    assert [r["id"] for r in refs_rows] == ["ref-kira-art_0", "ref-kira-art_1"]
    assert refs_rows[0]["text"] == f"zxq kira, {traits}"
    assert refs_rows[1]["text"] == f"zxq kira, {traits}, watercolor, on a beach"
    assert all(r["repeats"] == 3 for r in refs_rows)
    assert all(r["repeats"] == 1 for r in rows if r not in refs_rows)
    assert (folder / "3_zxq_kira_references" / "ref-kira-art_1.png").is_file()
    assert dataset.references == 2
    assert dataset.images == outputs["caption"].images + 2
    toml = (folder / "dataset.toml").read_text()
    assert 'image_dir = "3_zxq_kira_references"\n  num_repeats = 3' in toml
    assert 'image_dir = "1_zxq_kira"\n  num_repeats = 1' in toml
    # train.augment: each reference trains as itself and two zoomed variants (its 3 repeats
    # shared), the generated images as they are.
    augment = {"augment": {"variants": 2}, "validation": {"images": 0}}
    augmented = dict(params, train=params["train"] | augment)
    adapter = run_train(
        load_project(write_params(tmp_path / "aug", augmented)), dataset, tmp_path / "lora", {}
    )
    assert adapter.images == dataset.images + 2 * 2
    # New reference art or captions are new training data: the sealed dataset is not reused.
    (refs / "art_1.txt").write_text("watercolor, in a city")
    recaptioned = run_caption(project, outputs["generate"], outputs["review"], tmp_path / "data")
    assert recaptioned.fingerprint != dataset.fingerprint
    Image.new("RGB", (96, 80), "pink").save(refs / "art_1.png")
    again = run_caption(project, outputs["generate"], outputs["review"], tmp_path / "data")
    assert again.fingerprint != recaptioned.fingerprint and again.digest != recaptioned.digest


def test_leave_free_captions_a_share_of_the_dataset_without_the_freed_axis(outputs, tmp_path):
    params = tiny_params(caption={"leave_free": {"axes": ["expression"], "share": 1.0}})
    project = load_project(write_params(tmp_path, params))
    dataset = run_caption(project, outputs["generate"], outputs["review"], tmp_path / "data")
    rows = atomic.read_jsonl(Path(dataset.path) / "manifest.jsonl")
    assert rows and all(r["freed_axes"] == ["expression"] for r in rows)
    assert not any("smiling" in r["caption"] for r in rows)
    default = atomic.read_jsonl(Path(outputs["caption"].path) / "manifest.jsonl")
    assert all("smiling" in r["caption"] and r["freed_axes"] == [] for r in default)
    assert dataset.fingerprint != outputs["caption"].fingerprint


def test_include_references_needs_references(tmp_path):
    from charloop.params.project import ParamsError

    params = tiny_params(caption={"include_references": True})
    params["character"].pop("references", None)
    with pytest.raises(ParamsError, match=r"caption\.include_references"):
        load_project(write_params(tmp_path, params))


def _scene_counts(rows):
    counts: dict[str, int] = {}
    for row in rows:
        key = json.dumps(row["context"], sort_keys=True)
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_an_accumulating_dataset_draws_the_best_of_earlier_iterations(
    outputs, project, loop_dir, tmp_path
):
    from charloop.core.image_layout import layout_features
    from charloop.stages.caption.pool import identity_score

    generated = run_generate(project, 2, None, loop_dir / "gen2")
    filtered = run_filter(project, generated, loop_dir / "filt2")
    reviewed = run_review(generated, filtered, None, loop_dir / "review2")
    first = outputs["caption"]
    pool = atomic.read_jsonl(Path(outputs["review"].path) / "kept.jsonl")
    fresh = atomic.read_jsonl(Path(reviewed.path) / "kept.jsonl")
    # Every earlier image competing, no layout rule: the best per_context of each scene.
    loose = {
        "dataset": {
            "policy": "accumulate",
            "per_context": 4,
            "older": "all",
            "max_layout_similarity": None,
        }
    }
    open_project = load_project(write_params(tmp_path, tiny_params(caption=loose)))
    dataset = run_caption(open_project, generated, reviewed, tmp_path / "data", first)
    rows = atomic.read_jsonl(Path(dataset.path) / "manifest.jsonl")
    cap = open_project.params.caption.dataset.per_context
    assert _scene_counts(rows) == {k: min(n, cap) for k, n in _scene_counts(pool + fresh).items()}
    by_iteration = {i: [r for r in rows if r["iteration"] == i] for i in (1, 2)}
    assert by_iteration[1] and by_iteration[2], "both iterations contribute"
    assert dataset.sources == {"1": len(by_iteration[1]), "2": len(by_iteration[2])}
    for row in rows:  # lineage: where each image came from, and the file in the dataset
        assert (Path(dataset.path) / row["dataset_file"]).is_file()
        assert row["source"].endswith(f"gen{'' if row['iteration'] == 1 else 2}/{row['file']}")
        assert sha256_file(Path(dataset.path) / row["dataset_file"]) == row["sha256"]
    # The defaults: earlier images only as good as this iteration's weakest kept image,
    # and no two images of a scene with the same layout.
    default = run_caption(project, generated, reviewed, loop_dir / "data2", first)
    chosen = atomic.read_jsonl(Path(default.path) / "manifest.jsonl")
    bar = min(identity_score(r) for r in fresh)
    assert all(identity_score(r) >= bar for r in chosen if r["iteration"] == 1)
    assert len(chosen) < len(rows), "the bar or the layout rule dropped something"
    limit = project.params.caption.dataset.max_layout_similarity
    for scene in _scene_counts(chosen):
        mine = [r for r in chosen if json.dumps(r["context"], sort_keys=True) == scene]
        images = [Image.open(Path(default.path) / r["dataset_file"]) for r in mine]
        layout = layout_features(images)
        similar = layout @ layout.T - np.eye(len(mine)) * 2
        assert similar.max() <= limit
    # The previous dataset is an input: another one is another dataset.
    alone = run_caption(project, generated, reviewed, loop_dir / "data2-alone")
    assert alone.sources == {"2": reviewed.kept} and alone.digest != default.digest

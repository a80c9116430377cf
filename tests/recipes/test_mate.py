"""MATE's stages (maple.models.mate_task) without Ray: what trains, what stays bit-identical, how rows are paired."""

import pytest
import torch

from maple.losses.mate import MateLoss
from maple.recipes.mate import MateTask, collate_stage, document_target_kind, stack, stage_metrics, stage_step


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def run_steps(model, rows, stage, n=3):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    loss_fn = MateLoss(temperature=0.1, gather=False)
    return [stage_step(model, loss_fn, collate_stage(model, rows, stage, epoch), optimizer) for epoch in range(n)]


def test_stage2_leaves_the_llm_and_vlm_base_bit_identical_and_trains_projection_and_lora(tiny_mate, mate_rows):
    tiny_mate.add_image_lora(rank=2, alpha=4)
    llm, vlm, proj = snapshot(tiny_mate.llm), snapshot(tiny_mate.vlm), snapshot(tiny_mate.projection)
    run_steps(tiny_mate, mate_rows, "images")
    assert all(torch.equal(v, tiny_mate.llm.state_dict()[k]) for k, v in llm.items())
    after = tiny_mate.vlm.state_dict()
    changed = {k for k, v in vlm.items() if not torch.equal(v, after[k])}
    assert changed and all("lora_" in k for k in changed)  # only adapters moved inside the VLM
    assert any("vision_model" in k and "lora_B" in k for k in changed)
    assert not all(torch.equal(v, tiny_mate.projection.state_dict()[k]) for k, v in proj.items())


def test_stage1_trains_the_projection_only(tiny_mate, mate_rows):
    llm, vlm = snapshot(tiny_mate.llm), snapshot(tiny_mate.vlm)
    for stage in ("captions", "documents"):
        run_steps(tiny_mate, mate_rows, stage)
    assert all(torch.equal(v, tiny_mate.llm.state_dict()[k]) for k, v in llm.items())
    assert all(torch.equal(v, tiny_mate.vlm.state_dict()[k]) for k, v in vlm.items())


def test_task_build_sets_the_trainable_parameters_of_each_stage(tiny_mate, mate_config, tmp_path):
    tiny_mate.save_pretrained(tmp_path / "init")
    for stage, expected in (("captions", {"projection"}), ("images", {"projection", "lora"})):
        task = MateTask(stage, tmp_path / "init", mate_config().mate)
        model, loss_fn = task.build(seed=0)
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        kinds = {"projection" if n.startswith("projection.") else "lora" if "lora_" in n else n for n in names}
        assert kinds == expected
        assert len(task.trainable_parameters(model, loss_fn)) == len(names)


def test_stage_loss_falls_on_a_fixed_batch(tiny_mate, mate_rows):
    losses = [t["loss"] for t in run_steps(tiny_mate, mate_rows, "captions", n=15)]
    assert losses[-1] < losses[0]


def test_document_stage_pairs_each_caption_with_its_long_caption_or_document(tiny_mate, mate_rows):
    batch = collate_stage(tiny_mate, mate_rows, "documents", epoch=1, seed=0)
    kinds = [document_target_kind(str(i), 1, 0) for i in mate_rows["id"]]
    assert set(kinds) == {"long_caption_emb", "document_emb"}
    for j, kind in enumerate(kinds):
        assert torch.equal(batch["target"][j], stack(mate_rows[kind][j:j + 1])[0])


def test_collate_names_the_missing_columns(tiny_mate, mate_rows):
    rows = {k: v for k, v in mate_rows.items() if k != "caption_emb"}
    with pytest.raises(ValueError, match="caption_emb"):
        collate_stage(tiny_mate, rows, "images")


def test_stage_metrics_report_recall_at_1_per_target(tiny_mate, mate_rows):
    metrics = stage_metrics(tiny_mate, mate_rows, "captions", batch_size=5)
    assert set(metrics) == {f"val_captions_{text}_r_at_1" for text in ("caption", "long_caption", "document")}
    with torch.no_grad():
        source = tiny_mate.project_vlm_texts(**tiny_mate.vlm_tokenize(list(mate_rows["caption"])))
    n = len(source)
    for column in ("caption", "long_caption", "document"):
        target = stack(mate_rows[f"{column}_emb"])
        hits = 0
        for i in range(n):  # explicit loop: the nearest target by cosine is the row's own
            cos = [float(torch.nn.functional.cosine_similarity(source[i], target[j], dim=0)) for j in range(n)]
            hits += int(max(range(n), key=lambda j: cos[j]) == i)
        assert metrics[f"val_captions_{column}_r_at_1"] == pytest.approx(hits / n)

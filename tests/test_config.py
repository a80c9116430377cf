import pytest

from maple.config import ConfigError, load_config


def test_defaults_load_without_a_file():
    cfg = load_config()
    assert cfg.train.loss.kl_temperature == 0.02 and cfg.mine.beta == 0.01 and cfg.mine.top_k == 50


def test_override_sets_a_nested_key_with_a_typed_value():
    cfg = load_config(None, ["train.lr=1e-4", "mine.directions=[t2i]", "train.loss.rpa=listwise"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.mine.directions == ["t2i"]
    assert cfg.train.loss.rpa == "listwise"


def test_unknown_key_in_file_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml.*unknown key 'train\.lrr'"):
        load_config(path)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"key 'train\.steps'"):
        load_config(None, ["train.steps=many"])


def test_unknown_section_is_an_error():
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(None, ["trian.lr=1"])


def test_literal_choices_are_enforced():
    with pytest.raises(ConfigError, match=r"key 'judge\.backend'"):
        load_config(None, ["judge.backend=sampling"])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.lr"])


def test_every_recipe_in_configs_loads():
    from pathlib import Path

    recipes = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)


def test_with_overrides_returns_a_validated_copy():
    cfg = load_config()
    other = cfg.with_overrides("train.loss.rpa=pairwise", "run.seed=7")
    assert other.train.loss.rpa == "pairwise" and other.run.seed == 7
    assert cfg.train.loss.rpa == "none" and cfg.run.seed == 0
    with pytest.raises(ConfigError):
        cfg.with_overrides("train.loss.rpa=triplewise")


def test_a_curriculum_stage_narrows_the_world_and_says_which_key_does_not():
    stages = '[{steps: 3, max_objects: 2, relations: [above, below]}, {steps: 2}]'
    cfg = load_config(None, [f"demo.curriculum={stages}"])
    assert [(s.steps, s.max_objects, s.relations) for s in cfg.demo.curriculum] == [(3, 2, ["above", "below"]),
                                                                                   (2, None, None)]
    with pytest.raises(ConfigError, match=r"^<defaults>: demo\.curriculum\[0\]\.max_objects \(4\) is above "
                                          r"world\.max_objects \(3\)"):
        load_config(None, ["demo.curriculum=[{steps: 1, max_objects: 4}]"])
    with pytest.raises(ConfigError, match=r"demo\.curriculum\[1\]\.relations: \['inside'\]"):
        load_config(None, ["demo.curriculum=[{steps: 1}, {steps: 1, relations: [above, inside]}]"])
    with pytest.raises(ConfigError, match=r"demo\.curriculum\[0\]\.relations: empty"):
        load_config(None, ["demo.curriculum=[{steps: 1, relations: []}]"])
    with pytest.raises(ConfigError, match=r"demo\.curriculum\[0\]: min_objects is above max_objects"):
        load_config(None, ["demo.curriculum=[{steps: 1, min_objects: 3, max_objects: 2}]"])
    with pytest.raises(ConfigError, match=r"key 'demo\.curriculum\.0\.steps'"):
        load_config(None, ["demo.curriculum=[{steps: 0}]"])
    with pytest.raises(ConfigError, match="does not combine with demo.curriculum"):
        load_config(None, ["demo.curriculum=[{steps: 1}]", "demo.judge_noise_sweep=[0.1]"])

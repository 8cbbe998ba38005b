"""task.builder: every task yaml names an importable builder that declares its model; bad names are refused in one
line; a missing key is reported with where to set it."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from rankmix.errors import ConfigError
from rankmix.guards import config_errors, refusal
from rankmix.locations import CONF_DIR
from rankmix.modules.builder import ModelFacts, builder_of, builder_target, facts_of

TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))


@pytest.mark.parametrize("name", TASKS)
def test_every_task_yaml_names_a_builder_that_declares_its_model(name):
    task = OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")
    facts = facts_of(task)
    assert isinstance(facts, ModelFacts)
    assert callable(builder_of(task))
    assert builder_target(task).startswith("rankmix.modules.")


def test_the_facts_are_those_of_the_model_built():
    vqa = facts_of(OmegaConf.load(CONF_DIR / "task" / "vqa.yaml"))
    visual = facts_of(OmegaConf.load(CONF_DIR / "task" / "visual_instruction.yaml"))
    assert (vqa.language, vqa.auto_class, vqa.image, vqa.decoder) == ("text.name_or_path", "AutoModel", "prefix", False)
    assert (visual.language, visual.image, visual.decoder) == ("llm.name_or_path", "patches", True)


def test_a_builder_of_ones_own_is_named_by_target_with_its_arguments():
    built = builder_of({"builder": {"_target_": "builtins.dict", "_partial_": True, "size": 3}})
    assert built(extra=1) == {"size": 3, "extra": 1}
    assert facts_of({"builder": {"_target_": "builtins.dict"}}) == ModelFacts()   # declares nothing: a decoder LM


@pytest.mark.parametrize(("task", "key", "says"), [
    ({"builder": {"_target_": "rankmix.modules.nowhere.build"}}, "task.builder._target_", "cannot be imported"),
    ({"builder": "rankmix.modules.vqa.build_vqa"}, "task.builder", "_partial_: true"),
    ({"kind": "vqa", "builder": {"_target_": "rankmix.modules.vqa.build_vqa"}}, "task.kind", "no longer read"),
    ({"kind": "vision"}, "task.kind", "not read: name the task's builder in its yaml"),
    ({"kind": "vl_multitask"}, "task.kind", "_target_: rankmix.modules.clip_bart.build_vl_multitask, _partial_: true"),
    ({"kind": "vqa"}, "task.kind", "write builder: {_target_: rankmix.modules.vqa.build_vqa, _partial_: true}"),
    ({"kind": "causal_lm"}, "task.kind", "_target_: rankmix.modules.causal_lm.build_causal_lm, _partial_: true"),
    ({"name": "mine"}, "task.builder", "not set: write builder: {_target_:"),
])
def test_a_bad_builder_is_refused_in_one_line(task, key, says):
    with pytest.raises(ConfigError) as err:
        builder_of(task)
    assert err.value.key == key and says in str(err.value) and "\n" not in str(err.value)


def test_a_key_the_config_lacks_is_named_with_where_to_set_it():
    cfg = OmegaConf.create({"task": {"name": "mine"}})
    OmegaConf.set_struct(cfg, True)
    with pytest.raises(config_errors()) as err:
        _ = cfg.task.inference
    line = refusal(err.value)
    assert line.startswith("task.inference: not set") and "conf/task/<name>.yaml" in line and "\n" not in line

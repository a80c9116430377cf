"""The grammar rewriter: each kind changes exactly what it claims, checked on the parsed caption and against the
scene's ground truth (the reference judge's score); proposals are deterministic by (seed, id)."""

import random
import pytest

from maple.data.config import WorldConfig
from maple.data.synth import describe, parse_caption, reference_score, render_caption, sample_scene
from maple.rewrite.config import KINDS, MEANING_CHANGING, RewriteConfig
from maple.rewrite.grammar import EDITS, GrammarRewriter

WORLD = WorldConfig()


def _cases(n=120, seed=0):
    """(scene, clauses) of random synthetic scenes with 1-3 objects and a true, complete caption."""
    rng = random.Random(seed)
    for _ in range(n):
        scene = sample_scene(rng, WORLD, forbid=set())
        yield scene, describe(scene, rng, WORLD.relations)


def _edited(kind: str):
    """Every (scene, caption clauses, edited clauses) where `kind` applies."""
    rng = random.Random(1)
    for scene, clauses in _cases():
        edited = EDITS[kind](clauses, rng, WORLD)
        if edited is not None:
            yield scene, clauses, edited


def _mentions(clauses):
    return parse_caption(render_caption(clauses)).mentions


def test_every_kind_applies_to_some_caption():
    assert set(EDITS) == set(KINDS)
    for kind in KINDS:
        assert sum(1 for _ in _edited(kind)) >= 20, kind


def test_swap_attributes_exchanges_one_attribute_between_two_objects():
    for _, before, after in _edited("swap_attributes"):
        old, new = set(_mentions(before)) - set(_mentions(after)), set(_mentions(after)) - set(_mentions(before))
        assert len(old) == len(new) == 2
        a, b = sorted(old)

        def swapped(slot):
            return {tuple(b[slot] if i == slot else v for i, v in enumerate(a)),
                    tuple(a[slot] if i == slot else v for i, v in enumerate(b))}

        assert new in (swapped(0), swapped(1))  # the size or the colour exchanged, all else kept
        assert [c.relation for c in before] == [c.relation for c in after]


def test_swap_relation_exchanges_the_two_sides_of_one_clause():
    for _, before, after in _edited("swap_relation"):
        changed = [(b, a) for b, a in zip(before, after) if b != a]
        assert len(changed) == 1
        b, a = changed[0]
        assert (a.subject, a.relation, a.object) == (b.object, b.relation, b.subject)


@pytest.mark.parametrize("kind, slots", [("replace_attribute", {0, 1}), ("replace_object", {2})])
def test_replacements_change_one_slot_of_one_object(kind, slots):
    for _, before, after in _edited(kind):
        old, new = set(_mentions(before)) - set(_mentions(after)), set(_mentions(after)) - set(_mentions(before))
        assert len(old) == len(new) == 1
        (o,), (n,) = old, new
        changed = {i for i in range(3) if o[i] != n[i]}
        assert len(changed) == 1 and changed <= slots


def test_replace_relation_changes_one_clause_relation_only():
    for _, before, after in _edited("replace_relation"):
        changed = [(b, a) for b, a in zip(before, after) if b != a]
        assert len(changed) == 1
        b, a = changed[0]
        assert (a.subject, a.object) == (b.subject, b.object) and a.relation != b.relation


def test_drop_and_add_clause_change_the_clause_count_by_one():
    for _, before, after in _edited("drop_clause"):
        assert len(after) == len(before) - 1 and all(c in before for c in after)
    for _, before, after in _edited("add_clause"):
        assert len(after) == len(before) + 1 and after[:-1] == before
        assert set(_mentions(after)) - set(_mentions(before))  # it names a new object


def test_ground_truth_rewordings_stay_true_and_meaning_changes_are_judged_against_the_scene():
    """What the reference judge (the scene's ground truth) says of each kind: a rewording is as true as the
    caption; a swap of relation sides, an attribute or object replaced, an added clause are never true; a replaced
    relation is false exactly when the new relation does not hold (the claim is not always right: the judge decides).
    """
    for kind in KINDS:
        for scene, before, after in _edited(kind):
            truth = reference_score(render_caption(after), scene)
            assert reference_score(render_caption(before), scene) == 1.0
            if kind == "reword":
                assert truth == 1.0
            elif kind in ("swap_relation", "replace_attribute", "replace_object", "add_clause"):
                assert truth < 1.0, (kind, render_caption(after))
            elif kind == "replace_relation":
                by = {o.triple: o for o in scene.objects}
                (changed,) = [a for b, a in zip(before, after) if b != a]
                from maple.data.synth import relation_holds

                holds = relation_holds(by[changed.subject], changed.relation, by[changed.object])
                assert (truth == 1.0) == holds


def test_proposals_are_distinct_new_and_deterministic_by_seed_and_id():
    rewriter = GrammarRewriter(RewriteConfig(backend="grammar", per_query=6))
    caption = "a small red circle left of a large blue square and a large blue square above a small green triangle"
    first, again = rewriter.rewrite([("q1", caption)])[0], rewriter.rewrite([("q1", caption)])[0]
    assert first.rewrites == again.rewrites and len(first.rewrites) == 6
    texts = [r.text for r in first.rewrites]
    assert len(set(texts)) == 6 and caption not in texts
    assert rewriter.rewrite([("q2", caption)])[0].rewrites != first.rewrites
    assert {r.kind for r in first.rewrites} <= set(KINDS)
    assert any(r.kind in MEANING_CHANGING for r in first.rewrites)


def test_a_caption_outside_the_grammar_is_one_reject_not_an_error():
    out = GrammarRewriter(RewriteConfig(backend="grammar")).rewrite([("q", "two cats on a sofa")])[0]
    assert out.rewrites == [] and [reason for reason, _ in out.rejects] == ["caption_outside_grammar"]


def test_unknown_kinds_are_refused_at_start():
    with pytest.raises(ValueError, match="rewrite.kinds"):
        GrammarRewriter(RewriteConfig(backend="grammar", kinds=["paraphrase_everything"]))

"""Next-user model (models/next_user.py): attention masks, prompts, losses, learning, artefacts."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from dualrec.config import NextUserConfig
from models.next_user import (
    NextUserModel,
    NextUserSpec,
    UserTable,
    _batch_inputs,
    batch_losses,
    build_sequence_data,
    encode_items,
    generate,
    load_next_user,
    save_next_user,
    sum_pool,
    train_next_user,
)

UD, CD = 6, 8
CFG = NextUserConfig(dim=16, heads=2, epochs=1, batch_size=64, id_buckets=512, cat_buckets=16, samples_per_item=2)


def _users(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return UserTable.build(np.arange(n) + 1000, rng.normal(size=(n, UD)).astype(np.float32))


def _items(n, spec, seed=0, content=None):
    rng = np.random.default_rng(seed)
    c = content if content is not None else rng.normal(size=(n, CD))
    return encode_items(np.arange(n), rng.integers(0, 9, n), rng.integers(0, 4, n), rng.integers(1000, 9000, n), c, spec)


def _model(**over):
    torch.manual_seed(0)
    return NextUserModel(NextUserSpec.from_cfg(CFG, UD, CD, **over))


def _forward(model, items, seqs, users):
    return model(*_batch_inputs(model.spec, users, items, seqs))


def test_causal_mask_hides_later_users_and_the_prefix_stays_visible():
    users = _users()
    m = _model()
    items = _items(1, m.spec)
    a = [np.array([1000, 1001, 1002, 1003])]
    b = [np.array([1000, 1001, 1002, 1050])]  # only the last user differs
    with torch.no_grad():
        na, ha, _ = _forward(m, items, a, users)
        nb, hb, _ = _forward(m, items, b, users)
    # u^_1..u^_4 are conditioned on users < j: unchanged; u^_5 and u^_next see user 4
    assert torch.allclose(ha[:, :4], hb[:, :4], atol=1e-6)
    assert not torch.allclose(ha[:, 4], hb[:, 4], atol=1e-6)
    assert not torch.allclose(na, nb, atol=1e-6)
    # without the causal mask every output sees every user
    full = _model(causal=False)
    with torch.no_grad():
        _, fa, _ = _forward(full, items, a, users)
        _, fb, _ = _forward(full, items, b, users)
    assert not torch.allclose(fa[:, 0], fb[:, 0], atol=1e-6)


def test_zero_positives_generate_from_prompts_and_masking_prompts_removes_them():
    users = _users()
    rng = np.random.default_rng(3)
    c = rng.normal(size=(2, CD))
    c[1] = -c[0]
    empty = [np.zeros(0, np.int64)] * 2
    for prompts in (True, False):
        m = _model(prefix_prompts=prompts)
        spec = m.spec
        it = encode_items([5, 5], [1, 1], [2, 2], [3000, 3000], c, spec)
        e = generate(m, it, empty, users)
        assert e.shape == (2, UD) and np.isfinite(e).all()
        # two items that differ only by content: different next users only when the prompts are used
        assert (np.abs(e[0] - e[1]).max() > 1e-4) == prompts
    # the item-ID token is used only once the item has history
    m = _model()
    it = encode_items([5, 6], [1, 1], [2, 2], [3000, 3000], np.repeat(c[:1], 2, 0), m.spec)
    e0 = generate(m, it, empty, users)
    assert np.allclose(e0[0], e0[1], atol=1e-6)
    e1 = generate(m, it, [np.array([1000]), np.array([1000])], users)
    assert not np.allclose(e1[0], e1[1], atol=1e-6)


def _toy_world(n_items=240, seed=0):
    """Users in 4 clusters; an item of category c is liked by users of cluster c, in random order."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, UD)) * 2.0
    cl = np.repeat(np.arange(4), 25)
    emb = (centers[cl] + rng.normal(size=(100, UD)) * 0.3).astype(np.float32)
    users = UserTable.build(np.arange(100) + 1000, emb)
    cats = rng.integers(0, 4, n_items)
    content = np.eye(4)[cats] @ rng.normal(size=(4, CD)) + rng.normal(size=(n_items, CD)) * 0.1
    seqs = [rng.permutation(np.flatnonzero(cl == c) + 1000)[: rng.integers(1, 12)] for c in cats]
    negs = [rng.choice(np.flatnonzero(cl != c) + 1000, 6, replace=False) for c in cats]
    return users, cl, cats, content, seqs, negs


def test_training_learns_the_next_user_and_is_deterministic():
    users, cl, cats, content, seqs, negs = _toy_world(n_items=280)
    n = 240  # the last 40 items are new: never trained on, no positive user
    cfg = CFG.model_copy(update=dict(epochs=6, samples_per_item=2))
    spec = NextUserSpec.from_cfg(cfg, UD, CD)
    items = encode_items(np.arange(280), np.zeros(280), cats, np.full(280, 5000), content, spec)
    data = build_sequence_data({k: v[:n] for k, v in items.items()}, seqs[:n], negs[:n], users)
    assert data.n_items == n
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        m = NextUserModel(spec)
        out = train_next_user(m, data, cfg, seed=5)
        models.append(m)
    assert out["epoch_loss"][-1] < out["epoch_loss"][0]
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)
    # the prompts alone must find the new items' cluster
    e = generate(models[0], {k: v[n:] for k, v in items.items()}, [np.zeros(0, np.int64)] * 40, users)
    top = np.argsort(-(e @ users.emb.T), axis=1)[:, :10]
    precision = float((cl[top] == cats[n:, None]).mean())
    assert precision > 0.6  # random: 0.25


@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.5, 0.5), (0.0, 1.0, 1.0)])
def test_each_loss_can_be_switched(weights):
    users, _, cats, content, seqs, negs = _toy_world(n_items=60)
    cfg = CFG.model_copy(update=dict(loss_contrastive=weights[0], loss_ce=weights[1], loss_aux=weights[2]))
    spec = NextUserSpec.from_cfg(cfg, UD, CD)
    data = build_sequence_data(encode_items(np.arange(60), np.zeros(60), cats, np.full(60, 5000), content, spec), seqs, negs, users)
    torch.manual_seed(0)
    m = NextUserModel(spec)
    out = train_next_user(m, data, cfg, seed=0)
    assert len(out["epoch_loss"]) == 1 and np.isfinite(out["epoch_loss"][0])


def test_auxiliary_targets_are_stop_gradient():
    """Eq. 7 stops the gradient into the reconstructed user tokens (else the tokens collapse onto
    the decoder output). With no user in the input, the UID table and the user projection enter
    the auxiliary loss only as its target, so they must get no gradient from it."""
    users, _, cats, content, seqs, negs = _toy_world(n_items=30)
    cfg = CFG.model_copy(update=dict(loss_contrastive=0.0, loss_ce=0.0, loss_aux=1.0))
    spec = NextUserSpec.from_cfg(cfg, UD, CD)
    data = build_sequence_data(encode_items(np.arange(30), np.zeros(30), cats, np.full(30, 5000), content, spec), seqs, negs, users)
    m = _model()
    r = np.arange(30)
    parts = batch_losses(m, data, r, np.zeros(30, np.int64), np.random.default_rng(0), cfg)
    assert set(parts) == {"aux"}
    parts["aux"].backward()
    assert m.uproj.weight.grad is None or not m.uproj.weight.grad.any()
    assert m.uid.weight.grad is None or m.uid.weight.grad.coalesce().values().abs().sum() == 0
    assert m.queries.grad is not None and m.queries.grad.abs().sum() > 0  # the decoder side learns
    # with users in the input the projection does get gradient (as an encoder input)
    m.zero_grad()
    batch_losses(m, data, r, np.ones(30, np.int64) * 0 + np.minimum(1, np.diff(data.seq_off) - 1), np.random.default_rng(0),
                 cfg)["aux"].backward()
    assert m.uproj.weight.grad is not None and m.uproj.weight.grad.abs().sum() > 0


def test_sum_pooled_lookalike():
    users = _users()
    e, has = sum_pool([np.array([1000, 1002]), np.zeros(0, np.int64), np.array([99])], users)
    assert np.allclose(e[0], users.emb[0] + users.emb[2]) and has.tolist() == [True, False, False]
    assert not e[1].any()


def test_artefact_roundtrip_and_missing_artefact_names_the_stage(tmp_path):
    from dualrec.artifacts import ArtifactError
    from dualrec.lake import Lake

    lake = Lake(str(tmp_path))
    m = _model()
    day = "2026-01-05"
    with lake.publish_dir(Lake.model_rel("next_user", day)) as rel:
        save_next_user(m, lake, rel, {"day": day})
    back = load_next_user(lake, day)
    assert back.spec == m.spec and back.manifest["day"] == day
    for a, b in zip(m.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ArtifactError, match="similarity"):
        load_next_user(lake, "2026-01-06")

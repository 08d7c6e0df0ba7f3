"""Each stage's optimiser as data (config.py OptimizerSpec, stages/optim.py): the texts, the
official Adam kept bit for bit, schedules whose step count is data, the blend's projection
after any update, results made with another optimiser cached apart and labelled, and the
stopping rule per image of a batch (stages/loop.py)."""
import functools
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from barbershop_jax import cli
from barbershop_jax.config import EmbedConfig, TransferConfig, optimizer_spec
from barbershop_jax.models import bundle
from barbershop_jax.pipeline.store import cache
from barbershop_jax.stages import loop
from barbershop_jax.stages.optim import ADAM, Optimizer, OptState
from conftest import assert_batch_independent, count_compilations, generator_images


def test_optimizer_texts_have_one_spelling():
    assert optimizer_spec("adam").text() == "adam"
    assert optimizer_spec(" lion( b1 = 0.95,learning_rate=1e-3 ) ").text() == "lion(b1=0.95, learning_rate=0.001)"
    spec = optimizer_spec("sgd(momentum=0.9, schedule='cosine', warmup=0.05)")
    assert (spec.name, spec.hyperparams, spec.schedule, spec.warmup) == ("sgd", (("momentum", 0.9),), "cosine", 0.05)
    assert EmbedConfig(w_optimizer="sgd( momentum=0.9 )").w_optimizer == "sgd(momentum=0.9)"
    assert TransferConfig(inpaint_optimizer="lion").for_inpainting().align_optimizer == "lion"
    assert TransferConfig().for_inpainting() == TransferConfig()  # the same program as align step 1
    rule = optimizer_spec("adam(window=5, stop=1e-3)")
    assert rule.text() == "adam(stop=0.001, window=5)" and Optimizer(rule.text()).rule == loop.Convergence(1e-3, 5)
    assert Optimizer("adam(stop=0.01)").rule.window == 50 and Optimizer("adam").rule is None


@pytest.mark.parametrize("text, problem", [
    ("adamm", "not an optax optimiser"), ("lion(b9=1)", "optax.lion takes no b9"),
    ("__import__('os').system('true')", "is not an optimiser"), ("adam(b1=x)", "must be numbers"),
    ("adam(b1=1e999)", "must be a finite number"),
    ("adam(eps=1" + "0" * 400 + ")", "within float32's range"), ("adam(schedule='steps')", "schedule must be one of"),
    ("adam(warmup=2)", "warmup must be at least 0"), ("adam(learning_rate=0)", "learning_rate must be above 0"),
    ("adam(0.1)", "is not an optimiser"), ("scale_by_adam", "not an optax optimiser"), (3, "must be a text"),
    ("adam(window=5)", "give stop too"), ("adam(stop=2)", "stop must be at least 0"),
    ("adam(stop=0.1, window=0)", "window must be a whole number of at least 1"),
])
def test_a_bad_optimizer_is_one_line_naming_the_field(text, problem):
    with pytest.raises(ValueError, match=problem) as e:
        EmbedConfig(w_optimizer=text)
    assert str(e.value).startswith("EmbedConfig: w_optimizer: ") and "\n" not in str(e.value)


def test_the_default_is_the_official_adam_bit_for_bit():
    """Adam with only its learning rate injected, as before optimisers were data."""
    official = optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))
    params = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 7))
    state_a, state_b = jax.vmap(official(learning_rate=0.01).init)(params), ADAM.init(params, 0.01)
    a = b = params
    for i in range(5):
        updates, state_a = jax.vmap(official(learning_rate=0.0).update)(jnp.sin(a * (i + 1)), state_a, a)
        a = optax.apply_updates(a, updates)
        b, state_b = jax.vmap(ADAM.apply)(jnp.sin(b * (i + 1)), state_b, b)
    np.testing.assert_array_equal(a, b)


@functools.partial(jax.jit, static_argnums=0)  # the optimiser: static, as in a stage's step
def _apply(optimizer, grads, state, x):
    return jax.vmap(optimizer.apply)(grads, state, x)


def _moves(optimizer, total_steps, n_updates, lr=1.0):
    """The moves of a parameter under a constant gradient of -1."""
    x = jnp.zeros((1, 1))
    state, moves = optimizer.init(x, lr, total_steps), []
    for _ in range(n_updates):
        new, state = _apply(optimizer, jnp.full((1, 1), -1.0), state, x)
        moves.append(float((new - x)[0, 0]))
        x = new
    return np.array(moves)


def test_schedules_decay_over_the_stage_and_its_step_count_is_data():
    np.testing.assert_allclose(_moves(Optimizer("sgd(schedule='linear')"), 4, 5), [1, 0.75, 0.5, 0.25, 0], atol=1e-6)
    cosine = _moves(Optimizer("sgd(schedule='cosine', warmup=0.2)"), 10, 10)
    np.testing.assert_allclose(cosine[:3], [0.5, 1.0, 1.0], atol=1e-6)  # 2 steps of warmup, then the decay
    np.testing.assert_allclose(cosine[3:], 0.5 * (1 + np.cos(np.pi * np.arange(1, 8) / 8)), atol=1e-6)
    np.testing.assert_allclose(_moves(Optimizer("sgd"), 3, 4, lr=0.5), 0.5, atol=0)
    with count_compilations() as compiled:
        _moves(Optimizer("sgd(schedule='linear')"), 40, 2)  # another step count: the same programs
    assert not [name for name in compiled if "apply" in name], compiled


def test_the_blend_projection_follows_any_update():
    from barbershop_jax.stages import blend
    moves = _moves(blend.optimizer("sgd(momentum=0.9)"), 5, 3, lr=10.0)
    assert moves[0] == 1.0 and moves[1:].tolist() == [0.0, 0.0]  # u stays in [0, 1]


def _floor_step(models, state, data, i, cfg):
    """Per image: sgd on a * (x - 1)^2 + 1, whose relative improvement falls as x nears 1, the
    sooner the larger a is."""
    loss, grads = jax.value_and_grad(lambda x: jnp.sum(data * (x - 1.0) ** 2) + 1.0)(state.params)
    params, opt_state = Optimizer(cfg).apply(grads, state.opt_state, state.params)
    return OptState(params, opt_state, state.params), {"loss": loss}


class _Chunks(loop.LoopHook):
    def __init__(self):
        self.done = []

    def after_chunk(self, which, state_of, done, n_steps, metrics):
        self.done.append(done)


def _fit(a, text="sgd(stop=0.01, window=5)", n_steps=200):
    optimizer, hook = Optimizer(text), _Chunks()
    x = jnp.zeros((len(a), 1))
    state, metrics = loop.run(_floor_step, text, None, optimizer.start(x, 0.5, total_steps=n_steps),
                              jnp.asarray(a)[:, None], n_steps, loop=loop.Loop("floor", rule=optimizer.rule), hook=hook)
    return state, metrics, hook.done


def test_the_stopping_rule_stops_each_image_of_a_batch_as_it_stops_alone():
    a = [0.3, 0.1, 0.03]
    state, metrics, chunks = _fit(a)
    steps = np.asarray(metrics["steps"]).tolist()
    assert len(set(steps)) == 3 and max(steps) < 200, steps  # each its own step, before the count
    assert chunks[-1] == 200 and len(chunks) == -(-max(steps) // loop.chunking_of(None).length)  # ended early
    for k in range(3):
        alone, alone_metrics, _ = _fit(a[k:k + 1])
        assert np.asarray(alone_metrics["steps"]).tolist() == [steps[k]]
        for field in ("params", "result"):
            assert_batch_independent(getattr(state, field)[k], getattr(alone, field)[0], f"image {k} {field}")
    never, metrics, _ = _fit(a, "sgd", 40)  # no rule: every step, no "steps"
    assert "steps" not in metrics and float(never.params[2, 0]) > float(state.params[2, 0])


def test_another_optimizer_is_cached_apart_and_the_official_keys_stay():
    store = cache.EmbeddingCache(root="unused", weights="w")
    official, lion = EmbedConfig(), EmbedConfig(w_optimizer="lion(b1=0.95)")
    settings = {f: getattr(official, f) for f in ("w_steps", "learning_rate", "l2_lambda", "percept_lambda",
                                                  "p_norm_lambda", "lpips_size", "noise", "seed")}
    before = json.dumps({"kind": "W+", "image": "h", "weights": "w", "settings": settings}, sort_keys=True)
    assert store.w_key("h", official) == hashlib.sha256(before.encode()).hexdigest()  # the key of earlier runs
    assert store.w_key("h", lion) != store.w_key("h", official)
    assert store.fs_key("h", lion) != store.fs_key("h", official)
    assert store.fs_key("h", EmbedConfig(fs_optimizer="sgd")) != store.fs_key("h", official)
    assert store.w_key("h", EmbedConfig(fs_optimizer="sgd")) == store.w_key("h", official)  # W+ runs no FS
    key = lambda cfg, fields: cache.stage_key("Blend", ["h"], "w", official, cfg, fields)  # noqa: E731
    fields = cache.ALIGN_FIELDS + cache.BLEND_FIELDS
    for field in ("inpaint_optimizer", "align_optimizer", "blend_optimizer"):
        assert key(TransferConfig(**{field: "lion"}), fields) != key(TransferConfig(), fields), field
    assert cache.optimizers_of(official, TransferConfig(blend_optimizer="sgd"))["blend_optimizer"] == "sgd"


def test_the_embed_command_takes_optimizers_and_keeps_their_results_apart(tmp_path, capsys):
    models = bundle.load(parser=False)
    generator_images(models, ["face"], 11, tmp_path / "in", one_at_a_time=True)
    args = ["embed", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--w-steps", "6", "--batch-size", "1",
            "--no-fs", "--quiet"]
    meta = lambda: json.loads((tmp_path / "out" / "W+" / "face.json").read_text())  # noqa: E731
    w_plus = lambda: np.load(tmp_path / "out" / "W+" / "face.npy")  # noqa: E731
    # Lion, with a stopping rule that any step of it meets: the JSON records the steps it took.
    lion_text = "lion(b1=0.95, learning_rate=0.001, stop=1.0, window=1)"
    assert cli.main(args + ["--optimizer", lion_text]) == 0
    lion, lion_meta = w_plus(), meta()
    assert lion_meta["optimizers"] == {"w_optimizer": lion_text} and lion_meta["steps"] == 2
    capsys.readouterr()
    assert cli.main(args) == 0  # the official Adam: the Lion result is not reused
    assert "reused" not in capsys.readouterr().err
    assert meta()["optimizers"] == {"w_optimizer": "adam"} and meta()["key"] != lion_meta["key"]
    assert "steps" not in meta()  # no rule: every step ran
    assert not np.array_equal(w_plus(), lion)
    with pytest.raises(SystemExit) as e:
        cli.main(args + ["--w-optimizer", "lion(b9=1)"])
    assert e.value.code == 2
    assert "argument --w-optimizer: optimizer: optax.lion takes no b9" in capsys.readouterr().err

"""The models' random initialisations kept across processes (pipeline/runtime/init_cache.py):
a new process (here a new Store) reads the arrays an earlier one drew, bit for bit, without
drawing them; a damaged file, or one that does not fit the model, is drawn again."""
import jax
import numpy as np

from barbershop_jax import models
from barbershop_jax.models import bisenet, stylegan2, vgg16
from barbershop_jax.pipeline.runtime import init_cache

DRAWN = []  # one entry each time a drawing runs
CONFIG = stylegan2.tiny_config()


def counted(config, key):
    model = stylegan2._drawn(config, key)
    if not isinstance(model.latent_avg, jax.core.Tracer):  # drawn, not only traced for its structure
        DRAWN.append(config)
    return model


def _same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


def test_a_new_store_reads_the_drawn_weights_bit_for_bit(tmp_path):
    DRAWN.clear()
    key = jax.random.PRNGKey(7)
    drawn = init_cache.Store(tmp_path).initialised(counted, CONFIG, key)
    read = init_cache.Store(tmp_path).initialised(counted, CONFIG, key)
    assert len(DRAWN) == 1 and len(list(tmp_path.glob("*.npz"))) == 1
    _same(read, drawn)
    _same(read, stylegan2._drawn(CONFIG, key))
    assert isinstance(read, stylegan2.StyleGAN2) and read.config == CONFIG


def test_each_model_through_the_hook(tmp_path):
    """stylegan2.init, vgg16.init and bisenet.init go through models.initialised."""
    before = models._kept
    models.keep_initialisations(init_cache.Store(tmp_path))
    try:
        first = [stylegan2.init(CONFIG, jax.random.PRNGKey(1)), vgg16.init(vgg16.VGG16Config(), jax.random.PRNGKey(2)),
                 bisenet.init(bisenet.BiSeNetConfig(), jax.random.PRNGKey(3))]
        assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.npz")) == ["bisenet", "stylegan2", "vgg16"]
        again = [stylegan2.init(CONFIG, jax.random.PRNGKey(1)), vgg16.init(vgg16.VGG16Config(), jax.random.PRNGKey(2)),
                 bisenet.init(bisenet.BiSeNetConfig(), jax.random.PRNGKey(3))]
    finally:
        models.keep_initialisations(before)
    for a, b in zip(first, again):
        _same(a, b)
    _same(again[2], bisenet._drawn(bisenet.BiSeNetConfig(), jax.random.PRNGKey(3)))


def test_keys_and_configs_are_kept_apart(tmp_path):
    DRAWN.clear()
    store = init_cache.Store(tmp_path)
    a = store.initialised(counted, CONFIG, jax.random.PRNGKey(1))
    b = store.initialised(counted, CONFIG, jax.random.PRNGKey(2))
    wider = CONFIG.__class__(**{**CONFIG.__dict__, "channel_max": CONFIG.channel_max // 2})
    store.initialised(counted, wider, jax.random.PRNGKey(1))
    assert len(DRAWN) == 3 and len(list(tmp_path.glob("*.npz"))) == 3
    assert not np.array_equal(jax.tree.leaves(a)[0], jax.tree.leaves(b)[0])


def test_a_damaged_or_unfitting_file_is_drawn_again(tmp_path):
    DRAWN.clear()
    key = jax.random.PRNGKey(5)
    drawn = init_cache.Store(tmp_path).initialised(counted, CONFIG, key)
    [path] = tmp_path.glob("*.npz")
    path.write_bytes(path.read_bytes()[:1000])  # damaged
    _same(init_cache.Store(tmp_path).initialised(counted, CONFIG, key), drawn)
    np.savez(path, np.zeros(3))  # whole, but not this model's arrays
    _same(init_cache.Store(tmp_path).initialised(counted, CONFIG, key), drawn)
    assert len(DRAWN) == 3
    _same(init_cache.Store(tmp_path).initialised(counted, CONFIG, key), drawn)  # rewritten
    assert len(DRAWN) == 3


def test_the_least_recently_used_files_go_past_the_bound(tmp_path, monkeypatch):
    store = init_cache.Store(tmp_path)
    store.initialised(counted, CONFIG, jax.random.PRNGKey(1))
    [first] = tmp_path.glob("*.npz")
    monkeypatch.setattr(init_cache, "MAX_BYTES", int(first.stat().st_size * 1.5))
    store.initialised(counted, CONFIG, jax.random.PRNGKey(2))
    assert len(list(tmp_path.glob("*.npz"))) == 1 and not first.exists()

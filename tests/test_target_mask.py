"""The transfer stages' pure parts, against hand-worked label maps and against the libraries the
official code calls (scipy.ndimage, torch.nn.functional, torch.nn.CrossEntropyLoss)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from PIL import Image

from barbershop_jax.stages import align as alignment
from barbershop_jax.ops import masks
from barbershop_jax.stages import target_mask
from barbershop_jax.pipeline.store import cache
from barbershop_jax.losses import lpips as lpips_loss
from barbershop_jax.losses import segmentation
from barbershop_jax.models import bisenet, vgg16
from barbershop_jax.config import TransferConfig

LABELS = bisenet.label_map(16)
# One character per pixel: background, skin, nose, ears, neck, cloth, hair (seg.pth ids).
CODE = {".": 0, "s": 1, "o": 2, "e": 6, "n": 14, "c": 15, "h": 10}


def labels(*rows):
    return np.array([[CODE[ch] for ch in row.replace(" ", "")] for row in rows], np.int32)


def merged_and_filled(face, shape):
    merged = target_mask.merge_labels(face, shape, LABELS)
    return merged, target_mask.heuristic_target(merged, LABELS)


def test_longer_hair_covers_the_face_and_nothing_is_uncovered():
    face = labels(". . h h h h . .",
                  ". h h h h h h .",
                  ". h s s s s h .",
                  ". e s s s s e .",
                  ". . s s s s . .",
                  ". . n n n n . .",
                  ". c c c c c c .",
                  "c c c c c c c c")
    shape = labels(". h h h h h h .",
                   "h h h h h h h h",
                   "h h s s s s h h",
                   "h e s s s s e h",
                   "h h s s s s h h",
                   "h h n n n n h h",
                   "h c c c c c c h",
                   "c c c c c c c c")
    merged, filled = merged_and_filled(face, shape)
    expected = labels(". h h h h h h .",
                      "h h h h h h h h",
                      "h h s s s s h h",
                      "h e s s s s e h",
                      "h h s s s s h h",
                      "h h n n n n h h",
                      "h c c c c c c h",
                      "c c c c c c c c")
    np.testing.assert_array_equal(merged.target, expected)
    assert not merged.uncovered.any()
    np.testing.assert_array_equal(filled, expected)
    np.testing.assert_array_equal(merged.keep, (face != 0) | (shape == 10))


def test_shorter_hair_uncovers_forehead_and_ears():
    face = labels(". h h h h h h .",
                  "h h h h h h h h",
                  "h h h h h h h h",
                  "h h s s s s h h",
                  ". h s s s s h .",
                  ". . n n n n . .",
                  ". c c c c c c .",
                  "c c c c c c c c")
    shape = labels(". . h h h h . .",
                   ". . s s s s . .",
                   ". s s s s s s .",
                   ". e s s s s e .",
                   ". . s s s s . .",
                   ". . n n n n . .",
                   ". c c c c c c .",
                   "c c c c c c c c")
    merged, filled = merged_and_filled(face, shape)
    expected = labels(". . h h h h . .",
                      ". . . . . . . .",
                      ". . . . . . . .",
                      ". . s s s s . .",
                      ". . s s s s . .",
                      ". . n n n n . .",
                      ". c c c c c c .",
                      "c c c c c c c c")
    np.testing.assert_array_equal(merged.target, expected)
    uncovered = np.zeros((8, 8), bool)
    uncovered[1, 2:6] = uncovered[2, 1:7] = uncovered[3, [1, 6]] = True  # forehead and ears
    np.testing.assert_array_equal(merged.uncovered, uncovered)
    # The hair indicator known around them is mostly background: inpainted below 1, truncated to 0.
    np.testing.assert_array_equal(filled, expected)
    np.testing.assert_array_equal(merged.hair_face, face == 10)
    np.testing.assert_array_equal(merged.hair_shape, shape == 10)
    np.testing.assert_array_equal(merged.freed, (face == 10) & (shape != 10))  # hair: removed to background


def test_other_neck_and_shoulders_keep_the_face_s():
    face = labels(". . h h h h . .",
                  ". h s s s s h .",
                  ". h s s s s h .",
                  ". . s s s s . .",
                  ". . . n n . . .",
                  ". . . n n . . .",
                  ". . c c c c . .",
                  ". c c c c c c .")
    shape = labels(". . h h h h . .",
                   ". h s s s s h .",
                   ". h s s s s h .",
                   ". . s s s s . .",
                   ". n n n n n n .",
                   ". n n n n n n .",
                   "c c c c c c c c",
                   "c c c c c c c c")
    merged, filled = merged_and_filled(face, shape)
    expected = face.copy()
    np.testing.assert_array_equal(merged.target, expected)
    uncovered = np.zeros((8, 8), bool)
    uncovered[4:6, [1, 2, 5, 6]] = True  # the wider neck; the shape's cloth is never "uncovered"
    np.testing.assert_array_equal(merged.uncovered, uncovered)
    np.testing.assert_array_equal(filled, expected)


def test_bald_shape_reference_removes_the_hair():
    face = labels(". h h h h h h .",
                  "h h h h h h h h",
                  "h h s s s s h h",
                  ". e s s s s e .",
                  ". . s s s s . .",
                  ". . n n n n . .",
                  ". c c c c c c .",
                  "c c c c c c c c")
    shape = labels(". . s s s s . .",
                   ". s s s s s s .",
                   ". s s s s s s .",
                   ". e s s s s e .",
                   ". . s s s s . .",
                   ". . n n n n . .",
                   ". c c c c c c .",
                   "c c c c c c c c")
    merged, filled = merged_and_filled(face, shape)
    expected = labels(". . . . . . . .",
                      ". . . . . . . .",
                      ". . s s s s . .",
                      ". e s s s s e .",
                      ". . s s s s . .",
                      ". . n n n n . .",
                      ". c c c c c c .",
                      "c c c c c c c c")
    np.testing.assert_array_equal(merged.target, expected)
    uncovered = np.zeros((8, 8), bool)
    uncovered[0, 2:6] = uncovered[1, 1:7] = uncovered[2, [1, 6]] = True
    np.testing.assert_array_equal(merged.uncovered, uncovered)
    np.testing.assert_array_equal(filled, expected)  # no hair anywhere to inpaint from
    assert not (filled == 10).any()


def test_heuristic_fills_a_hole_enclosed_by_hair_with_hair():
    face = labels("h h h h h h h h",
                  "h h h h h h h h",
                  "h h h h h h h h",
                  "h h s s s s h h",
                  "h h s o o s h h",
                  ". . s s s s . .",
                  ". . n n n n . .",
                  "c c c c c c c c")
    shape = face.copy()
    shape[1, 3:5] = CODE["e"]  # a patch the shape's hair does not cover, the face's hair did
    merged, filled = merged_and_filled(face, shape)
    assert merged.target[1, 3] == merged.target[1, 4] == 0
    assert merged.uncovered[1, 3:5].all() and merged.uncovered.sum() == 2
    expected = face.copy()  # inpainted from hair on every known side: exactly 1 -> hair
    np.testing.assert_array_equal(filled, expected)


def test_gan_rounds_combine_as_the_official():
    uncovered = np.zeros((4, 4), bool)
    uncovered[0, :2] = True
    hair_face = np.zeros((4, 4), bool)
    hair_face[1, :] = True
    hair_shape = np.zeros((4, 4), bool)
    hair_shape[1, :2] = True
    inputs = target_mask.InpaintInputs(
        jnp.asarray(np.full((4, 4), 1, np.int32)), jnp.asarray(uncovered), jnp.zeros((4, 4), bool),
        jnp.asarray(hair_face & ~hair_shape), jax.random.PRNGKey(0))  # freed: all background for hair
    generated1 = np.arange(16, dtype=np.int32).reshape(4, 4) % 16
    previous, round2_target = target_mask._after_round1(inputs, jnp.asarray(generated1), 0)
    expected_previous = np.ones((4, 4), np.int32)
    expected_previous[1, 2:] = generated1[1, 2:]  # hair1 & ~hair2: the GAN's labels
    np.testing.assert_array_equal(previous, expected_previous)
    expected_round2 = expected_previous.copy()
    expected_round2[0, :2] = 0  # uncovered set to background
    np.testing.assert_array_equal(round2_target, expected_round2)
    generated2 = np.full((4, 4), 7, np.int32)
    generated2[0, 1] = 0  # background from the GAN is not taken
    final = target_mask._after_round2(inputs, previous, jnp.asarray(generated2), 0)
    expected_final = expected_previous.copy()
    expected_final[0, 0] = 7
    np.testing.assert_array_equal(final, expected_final)


# ----------------------------------------------------------------------------- losses
def test_cross_entropies_match_torch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 16, 12, 12)).astype(np.float32)
    target = rng.integers(0, 16, (2, 12, 12))
    keep = rng.random((2, 12, 12)) < 0.6
    t_logits, t_target = torch.from_numpy(logits), torch.from_numpy(target)
    w_bg = torch.zeros(16)
    w_bg[0] = 1
    for b in range(2):
        ours = np.transpose(logits[b], (1, 2, 0))
        ref = torch.nn.CrossEntropyLoss()(t_logits[b:b + 1], t_target[b:b + 1])
        np.testing.assert_allclose(segmentation.cross_entropy(ours, target[b]), ref, rtol=1e-5)
        ref = torch.nn.CrossEntropyLoss(weight=1 - w_bg)(t_logits[b:b + 1], t_target[b:b + 1])
        np.testing.assert_allclose(segmentation.cross_entropy_without(ours, target[b], 0), ref, rtol=1e-5)
        ggg = torch.from_numpy(keep[b:b + 1].astype(np.int64))  # the official passes ggg as class ids
        ref = torch.nn.CrossEntropyLoss(weight=w_bg)(t_logits[b:b + 1], ggg)
        np.testing.assert_allclose(segmentation.cross_entropy_only(ours, keep[b], 0), ref, rtol=1e-5)


def test_cross_entropy_ignores_pixels_outside_its_weights():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 8, 16)).astype(np.float32)
    target = rng.integers(0, 16, (8, 8))
    target[:4] = 0  # background: weight 0 in cross_entropy_without
    moved = logits.copy()
    moved[:4] += rng.normal(size=(4, 8, 16)).astype(np.float32) * 5
    assert segmentation.cross_entropy_without(logits, target, 0) == pytest.approx(
        float(segmentation.cross_entropy_without(moved, target, 0)), rel=1e-6)
    keep = np.zeros((8, 8), bool)
    keep[:4] = True  # kept pixels carry no weight in cross_entropy_only
    assert segmentation.cross_entropy_only(logits, keep, 0) == pytest.approx(
        float(segmentation.cross_entropy_only(moved, keep, 0)), rel=1e-6)
    assert float(segmentation.cross_entropy_only(logits, np.ones((8, 8), bool), 0)) == 0.0  # guarded 0/0


def test_masked_lpips_ignores_what_lies_outside_its_mask():
    """The mask weighs the distance maps: a change beyond the receptive field of the taps
    (relu3_3: 40 px) from the mask leaves the loss unchanged, a change inside it does not."""
    vgg = vgg16.init(vgg16.VGG16Config(widths=(8, 16, 16, 32, 32)), jax.random.PRNGKey(1))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32))
    y = jnp.asarray(rng.uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32))
    mask = np.zeros((1, 96, 96), np.float32)
    mask[:, :16, :16] = 1
    far = y.at[:, 64:, 64:].set(0.3)
    near = y.at[:, :16, :16].set(0.3)
    base = float(lpips_loss.masked_lpips(vgg, x, y, mask)[0])
    assert float(lpips_loss.masked_lpips(vgg, x, far, mask)[0]) == pytest.approx(base, rel=1e-6)
    assert abs(float(lpips_loss.masked_lpips(vgg, x, near, mask)[0]) - base) > 1e-3 * base


# ----------------------------------------------------------------------------- masks, F mixing
@pytest.mark.parametrize("iterations", [0, 1, 5])
def test_dilate_and_erode_match_scipy(iterations):
    rng = np.random.default_rng(iterations)
    m = (rng.random((3, 40, 40)) < 0.4).astype(np.float32)
    m[0, :, :20] = 1  # a block touching the border: erosion eats in from it
    d = np.stack([ndi.binary_dilation(x, iterations=iterations) if iterations else x for x in m])
    e = np.stack([ndi.binary_erosion(x, iterations=iterations) if iterations else x for x in m])
    np.testing.assert_array_equal(masks.dilate(m, iterations), d)
    np.testing.assert_array_equal(masks.erode(m, iterations), e)


@pytest.mark.parametrize("n_in,n_out", [(256, 32), (32, 32), (64, 32), (40, 32)])
def test_torch_bicubic_resize_matches_torch(n_in, n_out):
    x = np.random.default_rng(n_in).random((2, n_in, n_in)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x)[:, None], size=(n_out, n_out), mode="bicubic")[:, 0].numpy()
    np.testing.assert_allclose(masks.torch_bicubic_resize(x, n_out), ref, atol=2e-6)


def test_f_mixing_matches_the_formulas():
    """The three mixing steps written out with numpy, scipy.ndimage and torch, on random F."""
    rng = np.random.default_rng(3)
    r, c, p, size = 32, 6, 128, 64
    cfg = TransferConfig(smooth=2).resolve(128)  # parse 128, masks at 64, F at 32
    assert (cfg.parse_size, cfg.loss_size) == (p, size)
    a1, a2, f1, f2 = (rng.normal(size=(r, r, c)).astype(np.float32) for _ in range(4))
    blob = lambda cy, cx, rad: ((np.mgrid[:p, :p][0] - cy) ** 2 + (np.mgrid[:p, :p][1] - cx) ** 2 < rad ** 2)  # noqa: E731
    hair1, hair2, hair_t = blob(40, 64, 30), blob(50, 60, 35), blob(45, 64, 32)

    def weight(mask, grow):
        m = mask[::p // size, ::p // size]  # nearest 128 -> 64
        m = (ndi.binary_dilation if grow else ndi.binary_erosion)(m, iterations=2).astype(np.float32)
        m = F.interpolate(torch.from_numpy(m)[None, None], size=(r, r), mode="bicubic")[0, 0].numpy()
        return (1 - m)[..., None]

    expected = a1 + weight(hair1 | hair_t, True) * (f1 - a1)
    expected = a2 + weight(hair_t, False) * (expected - a2)
    expected = f2 + weight(hair2 & hair_t, False) * (expected - f2)
    ours = alignment.mix_structure(a1, a2, f1, f2, hair1.astype(np.float32), hair2.astype(np.float32),
                                   hair_t.astype(np.float32), cfg)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    # align_more_region: the second step reuses the first (dilated union) weight.
    wide = TransferConfig(smooth=2, align_more_region=True).resolve(128)
    expected = a1 + weight(hair1 | hair_t, True) * (f1 - a1)
    expected = a2 + weight(hair1 | hair_t, True) * (expected - a2)
    expected = f2 + weight(hair2 & hair_t, False) * (expected - f2)
    ours = alignment.mix_structure(a1, a2, f1, f2, hair1.astype(np.float32), hair2.astype(np.float32),
                                   hair_t.astype(np.float32), wide)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_config_sizes_follow_the_official_at_1024_and_512():
    c = TransferConfig().resolve(1024)
    assert (c.parse_size, c.loss_size, c.blend_parse_size) == (512, 256, 512)
    c = TransferConfig().resolve(512)
    assert (c.parse_size, c.loss_size, c.blend_parse_size) == (512, 256, 256)
    c = TransferConfig().resolve(64)
    assert (c.parse_size, c.loss_size, c.blend_parse_size) == (64, 32, 32)
    with pytest.raises(ValueError, match="sign"):
        TransferConfig(sign="pretty")
    with pytest.raises(ValueError, match="divide"):
        TransferConfig(parse_size=300).resolve(1024)


# ----------------------------------------------------------------------------- editable masks
def test_move_region_moves_and_scales_the_hair_on_a_hand_built_map():
    bg, hair, skin = LABELS.id("background"), LABELS.id("hair"), LABELS.id("skin")
    labels = np.full((32, 32), bg, np.int32)
    labels[10:20, 8:24] = skin
    labels[4:8, 12:16] = hair                      # a 4 x 4 square of hair, centre (5.5, 13.5)
    moved = target_mask.move_region(labels, (hair,), bg, dx=3, dy=-2)
    expect = np.where(labels == hair, bg, labels)
    expect[2:6, 15:19] = hair                      # shifted by (dy, dx) = (-2, 3)
    np.testing.assert_array_equal(moved, expect)
    grown = target_mask.move_region(labels, (hair,), bg, scale=2.0)
    ys, xs = np.nonzero(grown == hair)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (8, 8)   # twice the side, same centre
    assert (ys.mean(), xs.mean()) == pytest.approx((5.5, 13.5), abs=0.5)
    np.testing.assert_array_equal(grown[10:20], labels[10:20])           # the face is untouched
    np.testing.assert_array_equal(target_mask.move_region(labels, (hair,), bg), labels)


def test_shape_transform_text():
    assert target_mask.parse_shape_transform("scale=1.1,dx=0,dy=-20") == (1.1, 0.0, -20.0)
    assert target_mask.parse_shape_transform("dy=5") == (1.0, 0.0, 5.0)
    for bad in ("scale=0", "turn=3", "dx=left", "dx"):
        with pytest.raises(ValueError, match="shape transform"):
            target_mask.parse_shape_transform(bad)


def test_saved_target_masks_read_back_exactly_and_bad_ones_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 16, (24, 24)).astype(np.int32)
    path = cache.save_label_png(tmp_path / "m.png", labels, 16)
    with Image.open(path) as im:
        assert im.mode == "P"
        assert im.getpalette()[3 * 10:3 * 11] == target_mask.palette(16)[10].tolist()  # hair in its colour
    np.testing.assert_array_equal(cache.read_label_png(path, LABELS, 24), labels)
    assert target_mask.legend(LABELS)["10"]["name"] == "hair"
    with pytest.raises(ValueError, match="m.png: 24x24, but target masks are 32x32"):
        cache.read_label_png(path, LABELS, 32)
    Image.fromarray(np.full((24, 24), 200, np.uint8), "L").save(tmp_path / "unknown.png")
    with pytest.raises(ValueError, match=r"label value\(s\) \[200\] unknown to this parser \(16 classes\)"):
        cache.read_label_png(tmp_path / "unknown.png", LABELS, 24)
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="a RGB image, not a label map"):
        cache.read_label_png(tmp_path / "rgb.png", LABELS, 24)
    with pytest.raises(ValueError, match="no such target mask"):
        cache.read_label_png(tmp_path / "none.png", LABELS, 24)


# ----------------------------------------------------------------------------- other regions
REGION_CODE = {**CODE, "b": 5, "y": 4, "m": 7, "u": 8, "l": 9, "t": 11}  # + brows, eyes, mouth, lips, hat


def region_labels(*rows):
    return np.array([[REGION_CODE[ch] for ch in row.replace(" ", "")] for row in rows], np.int32)


def test_region_names_resolve_to_class_ids_and_unknown_ones_are_refused():
    assert LABELS.region_ids("hair") == (10,)
    assert LABELS.region_ids("lips") == LABELS.region_ids("lower_lip, upper_lip") == (8, 9)
    assert LABELS.region_ids("eyes,brows") == (4, 5)
    parsing = bisenet.label_map(19)
    assert parsing.region_ids("brows,eyes") == (2, 3, 4, 5) and parsing.region_ids("lips") == (12, 13)
    with pytest.raises(ValueError, match=r"region 'hair,beard': unknown region name\(s\) 'beard'; valid names: "
                                         r"background, skin, .*, lips"):
        LABELS.region_ids("hair,beard")
    assert TransferConfig(region=" eyes, brows").region == TransferConfig(region=("brows", "eyes")).region == "brows,eyes"
    with pytest.raises(ValueError, match="region: no label name"):
        TransferConfig(region=" , ")


def test_a_lips_transfer_changes_only_the_lips_in_the_target_mask():
    """The shape reference's lips are wider and lower, its hair and face outline differ: only
    pixels where either image has lips change; the face's lips the shape's do not cover take
    the surrounding label (skin); nothing is left to inpaint."""
    lips = LABELS.region_ids("lips")
    face = region_labels(". . h h h h . .",
                         ". h s s s s h .",
                         ". h s s s s h .",
                         ". s s u u s s .",
                         ". s s l l s s .",
                         ". s s s s s s .",
                         ". . s s s s . .",
                         ". . n n n n . .")
    shape = region_labels(". . . . . . . .",
                          "h s s s s s s h",
                          "s s s s s s s s",
                          "s s s s s s s s",
                          "s s s s s s s s",
                          "s u u u u u u s",
                          "s l l l l l l s",
                          "s s s s s s s s")
    merged = target_mask.merge_labels(face, shape, LABELS, lips)
    expected = region_labels(". . h h h h . .",
                             ". h s s s s h .",
                             ". h s s s s h .",
                             ". s s s s s s .",
                             ". s s s s s s .",
                             ". u u u u u u .",
                             ". l l l l l l .",   # the shape's lips also where the face has background
                             ". . n n n n . .")
    np.testing.assert_array_equal(merged.target, expected)
    either = np.isin(face, lips) | np.isin(shape, lips)
    np.testing.assert_array_equal(merged.target[~either], face[~either])  # hair and outline: the face's
    assert not merged.uncovered.any() and not merged.freed.any()
    np.testing.assert_array_equal(target_mask.heuristic_target(merged, LABELS, lips), merged.target)
    # The default region (hair) takes the shape's hair and leaves the face's lips.
    hair = target_mask.merge_labels(face, shape, LABELS)
    assert (hair.target[0] == 0).all() and (hair.target[3, 3:5] == 8).all()


def test_removed_regions_become_background_on_the_outline_and_their_surroundings_inside():
    """Hair and hat become background (the official rule for hair); another class takes the
    label of the nearest pixel outside the region, which may be background (an ear's outer
    pixel): that pixel is `freed`, for the GAN inpainting, and `uncovered` where the shape
    shows a face part there. Only hair (and hat) reach the face's background."""
    face = region_labels(". . h h h . .",
                         ". s s s s s .",
                         ". s s b s s .",
                         "e e s y s e e",
                         ". s s s s s .",
                         ". . n n n . .")
    np.testing.assert_array_equal(target_mask.remove_region(face, (10,), LABELS), np.where(face == 10, 0, face))
    no_brows_or_eyes = target_mask.remove_region(face, LABELS.region_ids("brows,eyes"), LABELS)
    np.testing.assert_array_equal(no_brows_or_eyes, np.where(np.isin(face, (4, 5)), 1, face))
    shape = region_labels(". . . . . . .",
                          "s s s s s s s",
                          ". s s s s s .",
                          "s s s s s s .",
                          ". s s s s s .",
                          ". . n n n . .")
    merged = target_mask.merge_labels(face, shape, LABELS, LABELS.region_ids("ears"))
    expected = face.copy()
    expected[3] = region_labels(". s s y s s .")[0]  # outer ear pixels: background; inner: skin
    np.testing.assert_array_equal(merged.target, expected)
    freed = np.zeros_like(face, bool)
    freed[3, [0, 6]] = True
    np.testing.assert_array_equal(merged.freed, freed)
    np.testing.assert_array_equal(merged.uncovered, freed & (shape != 0))  # only (3, 0): the shape shows skin
    hair = target_mask.merge_labels(face, shape, LABELS)
    assert hair.uncovered[1, [0, 6]].all()  # hair: also the face's background where the shape shows skin


def test_the_heuristic_fills_a_hole_in_a_region_of_several_classes_with_the_nearest_one():
    """Hair and hat together: a patch of the face's hat the shape's does not cover is
    inpainted back to hat (the nearest class of the region), not to hair."""
    face = region_labels("t t t t h h h h",
                         "t t t t h h h h",
                         "t t t t h h h h",
                         "t t s s s s h h",
                         "t t s o o s h h",
                         ". . s s s s . .",
                         ". . n n n n . .",
                         "c c c c c c c c")
    shape = face.copy()
    shape[1, 1:3] = REGION_CODE["e"]
    region = LABELS.region_ids("hair,hat")
    merged = target_mask.merge_labels(face, shape, LABELS, region)
    assert (merged.target[1, 1:3] == 0).all() and merged.uncovered.sum() == 2 and merged.uncovered[1, 1:3].all()
    np.testing.assert_array_equal(target_mask.heuristic_target(merged, LABELS, region), face)

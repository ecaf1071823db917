"""Copy-paste lesion baseline (freetumor.copy_paste): the bank, placement, blend and its guarantees."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy import ndimage

from freetumor.copy_paste import LesionBank, host_region, paste_lesion

T = 2  # tumour class
ORGAN = 1


def donor(shape=(40, 40, 40), seed=0):
    """A donor volume: noisy organ (class 1) with lesions of class 2 at known places."""
    rng = np.random.default_rng(seed)
    img = (0.4 + 0.05 * rng.standard_normal(shape)).clip(0, 1).astype(np.float32)
    lab = np.zeros(shape, np.int64)
    lab[2:-2, 2:-2, 2:-2] = ORGAN
    return img, lab


def put(img, lab, sl, value=0.8):
    lab[sl] = T
    img[sl] = value


def l_shape_bank(margin=2):
    """A bank of one asymmetric (L-shaped) lesion with a bright foot, no symmetry axis."""
    img, lab = donor()
    put(img, lab, np.s_[10:18, 10:13, 10:12], 0.7)   # long arm along x
    put(img, lab, np.s_[10:13, 13:17, 10:12], 0.9)   # foot along y at low x
    lab[10, 16, 12] = T                               # a bump on +z, breaks the z symmetry
    img[10, 16, 12] = 0.95
    return LesionBank.from_arrays([(img, lab)], T, margin_vox=margin, min_voxels=8)


def host(shape=(48, 48, 48), seed=1):
    rng = np.random.default_rng(seed)
    img = (0.3 + 0.05 * rng.standard_normal(shape)).clip(0, 1).astype(np.float32)
    lab = np.zeros(shape, np.int64)
    lab[4:-4, 4:-4, 4:-4] = ORGAN
    lab[4:10, 4:-4, 4:-4] = 3  # another class the paste must not touch outside the lesion
    return img, lab


# ---------------------------------------------------------------- the bank


def test_bank_counts_components_and_skips_tiny_ones():
    img, lab = donor()
    put(img, lab, np.s_[5:8, 5:8, 5:8])            # 27 voxels
    put(img, lab, np.s_[20:24, 20:24, 20:24])      # 64 voxels
    lab[24:26, 24:26, 24:26] = T                   # touches the cube above only at a corner: same lesion (26-conn)
    lab[30, 30, 30:32] = T                         # 2 voxels: tiny, skipped
    img2, lab2 = donor(seed=3)
    put(img2, lab2, np.s_[10:14, 30:33, 5:9])      # 48 voxels, in a second volume
    bank = LesionBank.from_arrays([(img, lab), (img2, lab2)], T, margin_vox=2, min_voxels=5)
    assert len(bank) == 3
    assert bank.skipped_small == 1
    assert sorted(les.voxels for les in bank.lesions) == [27, 48, 64 + 8]
    assert [les.source for les in bank.lesions] == [0, 0, 1]
    first = bank[0]
    assert first.mask.shape == (7, 7, 7)           # 3 + 2 * margin
    assert first.origin == (3, 3, 3)
    np.testing.assert_array_equal(first.image[first.mask], img[5:8, 5:8, 5:8].ravel())
    assert not first.other.any()
    # with a higher min_voxels the 27-voxel lesion goes too
    assert len(LesionBank.from_arrays([(img, lab)], T, min_voxels=30)) == 1


def test_bank_box_clipped_to_volume_and_cut_flag():
    img, lab = donor()
    put(img, lab, np.s_[0:4, 10:14, 10:14])        # touches the volume's edge
    put(img, lab, np.s_[20:24, 20:24, 20:24])
    bank = LesionBank.from_arrays([(img[None], lab[None])], T, margin_vox=3)  # (1, X, Y, Z) accepted
    assert len(bank) == 2
    edge = bank[0]
    assert edge.cut and edge.origin == (0, 7, 7) and edge.mask.shape == (7, 10, 10)
    assert not bank[1].cut
    dropped = LesionBank.from_arrays([(img, lab)], T, margin_vox=3, drop_cut=True)
    assert len(dropped) == 1 and dropped.skipped_cut == 1 and not dropped[0].cut


def test_bank_keeps_other_lesions_out_of_the_paste():
    img, lab = donor()
    put(img, lab, np.s_[10:14, 10:14, 10:14], 0.7)
    put(img, lab, np.s_[15:17, 10:14, 10:14], 0.95)  # a second lesion one voxel away, inside the first's box
    lab[30, 30, 30] = T                              # a tiny one near nothing
    bank = LesionBank.from_arrays([(img, lab)], T, margin_vox=3, min_voxels=8)
    assert len(bank) == 2
    big = bank[0]
    assert big.other.any() and not (big.other & big.mask).any()
    assert big.other.sum() == 2 * 4 * 4
    # pasted without flips at a fixed place (allowed: exactly the big lesion's footprint)
    h_img, h_lab = host()
    allowed = np.zeros(h_img.shape, bool)
    origin = np.array([20, 20, 20])
    lo, hi = np.array(big.lo), np.array(big.hi)
    allowed[tuple(slice(o + a, o + b) for o, a, b in zip(origin, lo, hi))] = big.mask[
        tuple(slice(a, b) for a, b in zip(lo, hi))]
    only_big = LesionBank([big], T, bank.margin_vox)
    out = paste_lesion(h_img, h_lab, allowed, only_big, np.random.default_rng(0), T, flip=False, feather_vox=3,
                       max_tries=2000)  # the centre must hit the one voxel that fits
    assert out is not None
    new_img, _new_lab, info = out
    assert info["origin"] == tuple(origin)
    other_in_patch = np.zeros(h_img.shape, bool)
    other_in_patch[tuple(slice(o, o + s) for o, s in zip(origin, big.mask.shape))] = big.other
    assert other_in_patch.any()
    np.testing.assert_array_equal(new_img[other_in_patch], h_img[other_in_patch])
    assert new_img.max() < 0.95  # the bright neighbour never shows


# ---------------------------------------------------------------- pasting


def test_paste_label_inside_allowed_with_the_donor_voxel_count():
    bank = l_shape_bank()
    h_img, h_lab = host()
    allowed = host_region(h_lab, ORGAN)
    for seed in range(8):
        out = paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(seed), T)
        assert out is not None
        new_img, new_lab, info = out
        lesion = new_lab == T
        assert lesion.sum() == bank[info["index"]].voxels == info["voxels"]
        assert np.all(allowed[lesion])
        assert new_img.dtype == h_img.dtype and new_lab.dtype == h_lab.dtype
        assert 1 <= info["tries"] <= 20


def test_paste_copies_the_donor_on_the_mask_and_leaves_far_voxels_untouched():
    bank = l_shape_bank(margin=3)
    h_img, h_lab = host()
    allowed = host_region(h_lab, ORGAN)
    les = bank[0]
    for feather in (0.0, 1.0, 2.5):
        out = paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(4), T, flip=False, feather_vox=feather)
        assert out is not None
        new_img, new_lab, info = out
        lesion = new_lab == T
        d = ndimage.distance_transform_edt(~lesion)
        far = d >= feather + 1
        np.testing.assert_array_equal(new_img[far], h_img[far])
        # on the mask: the donor exactly (alpha = 1)
        o = np.array(info["origin"])
        donor_in_patch = new_img[tuple(slice(a, a + s) for a, s in zip(o, les.mask.shape))]
        np.testing.assert_array_equal(donor_in_patch[les.mask], les.image[les.mask])
        changed = new_img != h_img
        if feather == 0:
            assert not (changed & ~lesion).any()
        else:  # the feather blends the ring next to the lesion: between host and donor
            ring = (d > 0) & (d < feather + 1)
            assert (changed & ring).sum() > 0.9 * ring.sum()
            box = tuple(slice(a, a + s) for a, s in zip(o, les.mask.shape))
            lo = np.minimum(h_img[box], les.image) - 1e-6
            hi = np.maximum(h_img[box], les.image) + 1e-6
            assert np.all((new_img[box] >= lo) & (new_img[box] <= hi))


def test_lesion_cut_at_the_donor_edge_flips_and_fits():
    """A lesion at the donor's edge has its mask off-centre in its (clipped) box: flipped, its
    bounds move, and the fit checks must follow them."""
    img, lab = donor()
    put(img, lab, np.s_[0:4, 0:3, 20:26], 0.8)   # cut by two faces of the volume
    bank = LesionBank.from_arrays([(img, lab)], T, margin_vox=3)
    les = bank[0]
    assert les.cut and les.lo == (0, 0, 3) and les.mask.shape == (7, 6, 12)
    h_img, h_lab = host()
    allowed = np.zeros(h_img.shape, bool)
    allowed[20:26, 20:26, 20:30] = True
    flips = set()
    for seed in range(30):
        out = paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(seed), T, max_tries=200)
        assert out is not None
        _img, new_lab, info = out
        lesion = new_lab == T
        assert lesion.sum() == les.voxels and np.all(allowed[lesion])
        flips.add(info["flips"][:2])
    assert len(flips) == 4


def test_other_classes_unchanged_outside_the_lesion():
    bank = l_shape_bank()
    h_img, h_lab = host()
    allowed = (h_lab == ORGAN) | (h_lab == 3)  # the lesion may cover class-3 voxels: relabelled only on its mask
    for seed in range(6):
        out = paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(seed), T)
        assert out is not None
        _img, new_lab, _info = out
        lesion = new_lab == T
        np.testing.assert_array_equal(new_lab[~lesion], h_lab[~lesion])
        assert (h_lab == 3).sum() - (new_lab == 3).sum() == (lesion & (h_lab == 3)).sum()


def test_none_when_nothing_fits():
    bank = l_shape_bank()
    h_img, h_lab = host()
    tiny = np.zeros(h_img.shape, bool)
    tiny[20:24, 20:24, 20:22] = True  # the lesion spans 8 x 7 x 3 voxels
    assert paste_lesion(h_img, h_lab, tiny, bank, np.random.default_rng(0), T, max_tries=50) is None
    assert paste_lesion(h_img, h_lab, np.zeros(h_img.shape, bool), bank, np.random.default_rng(0), T) is None
    # a lesion larger than the patch on one axis is never drawn, even with every voxel allowed
    small_img, small_lab = h_img[:6, :20, :20], h_lab[:6, :20, :20]
    assert paste_lesion(small_img, small_lab, np.ones(small_img.shape, bool), bank,
                        np.random.default_rng(0), T) is None
    assert paste_lesion(h_img, h_lab, tiny, LesionBank([], T, 2), np.random.default_rng(0), T) is None


def test_too_large_lesions_are_skipped_for_ones_that_fit():
    img, lab = donor()
    put(img, lab, np.s_[5:25, 5:9, 5:9])     # 20 voxels long
    put(img, lab, np.s_[30:31, 30:31, 30:31])  # one voxel: fits at any allowed centre
    bank = LesionBank.from_arrays([(img, lab)], T, min_voxels=1)
    patch = np.full((12, 12, 12), 0.3, np.float32)
    plab = np.ones(patch.shape, np.int64)
    inner = np.zeros(patch.shape, bool)
    inner[3:9, 3:9, 3:9] = True
    seen = set()
    for seed in range(10):  # one try each: the long lesion is never drawn, so never wastes it
        out = paste_lesion(patch, plab, inner, bank, np.random.default_rng(seed), T, max_tries=1)
        assert out is not None
        seen.add(out[2]["index"])
    assert seen == {1}


def test_feather_wider_than_the_margin_is_refused():
    bank = l_shape_bank(margin=1)
    h_img, h_lab = host()
    with pytest.raises(ValueError, match="feather_vox"):
        paste_lesion(h_img, h_lab, h_lab == ORGAN, bank, np.random.default_rng(0), T, feather_vox=1.5)


def test_deterministic_per_seed_and_varied_across_seeds():
    img, lab = donor()
    put(img, lab, np.s_[5:9, 5:9, 5:9])
    put(img, lab, np.s_[20:26, 20:23, 20:24], 0.6)
    put(img, lab, np.s_[30:33, 12:17, 30:35], 0.9)
    bank = LesionBank.from_arrays([(img, lab)], T)
    h_img, h_lab = host()
    allowed = host_region(h_lab, ORGAN)
    a = paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(7), T)
    b = paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(7), T)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    infos = [paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(s), T)[2] for s in range(12)]
    assert len({i["centre"] for i in infos}) >= 10
    assert len({i["index"] for i in infos}) == 3
    assert len({i["flips"] for i in infos}) >= 3


def test_flips_give_a_flipped_mask():
    bank = l_shape_bank()
    les = bank[0]
    crop = les.mask[tuple(slice(a, b) for a, b in zip(les.lo, les.hi))]
    for axes in [(0,), (1,), (2,), (0, 1)]:  # the L with its bump has no mirror symmetry
        assert not np.array_equal(np.flip(crop, axes), crop)
    h_img, h_lab = host()
    allowed = host_region(h_lab, ORGAN)
    seen = set()
    for seed in range(24):
        new_img, new_lab, info = paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(seed), T)
        lesion = new_lab == T
        got = lesion[ndimage.find_objects(lesion.astype(np.int8))[0]]
        axes = tuple(a for a in range(3) if info["flips"][a])
        np.testing.assert_array_equal(got, np.flip(crop, axes))
        # the donor's intensities come flipped with it
        sl = ndimage.find_objects(lesion.astype(np.int8))[0]
        donor_crop = les.image[tuple(slice(a, b) for a, b in zip(les.lo, les.hi))]
        np.testing.assert_array_equal(new_img[sl][got], np.flip(donor_crop, axes)[got])
        seen.add(info["flips"])
    assert len(seen) >= 4
    # flip=False: never flipped
    for seed in range(5):
        _i, new_lab, info = paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(seed), T, flip=False)
        lesion = new_lab == T
        assert info["flips"] == (False, False, False)
        np.testing.assert_array_equal(lesion[ndimage.find_objects(lesion.astype(np.int8))[0]], crop)


def test_inputs_and_bank_are_not_modified():
    bank = l_shape_bank()
    h_img, h_lab = host()
    allowed = host_region(h_lab, ORGAN)
    copies = (h_img.copy(), h_lab.copy(), allowed.copy())
    les = bank[0]
    bank_copies = (les.image.copy(), les.mask.copy(), les.other.copy())
    for seed in range(3):
        out = paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(seed), T)
        assert out is not None and out[0] is not h_img and out[1] is not h_lab
        assert not np.array_equal(out[0], h_img)
    for before, after in zip(copies, (h_img, h_lab, allowed)):
        np.testing.assert_array_equal(before, after)
    for before, after in zip(bank_copies, (les.image, les.mask, les.other)):
        np.testing.assert_array_equal(before, after)


def test_bank_pickles_and_pastes_the_same_after():
    img, lab = donor()
    put(img, lab, np.s_[5:9, 5:9, 5:9])
    put(img, lab, np.s_[20:26, 20:23, 20:24], 0.6)
    bank = LesionBank.from_arrays([(img, lab)], T, margin_vox=3)
    again = pickle.loads(pickle.dumps(bank))
    assert len(again) == len(bank) == 2
    assert (again.tumour_class, again.margin_vox) == (T, 3)
    for x, y in zip(bank.lesions, again.lesions):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)
        assert (x.anchor, x.lo, x.hi, x.origin) == (y.anchor, y.lo, y.hi, y.origin)
    h_img, h_lab = host()
    allowed = host_region(h_lab, ORGAN)
    a = paste_lesion(h_img, h_lab, allowed, bank, np.random.default_rng(5), T, feather_vox=2)
    b = paste_lesion(h_img, h_lab, allowed, again, np.random.default_rng(5), T, feather_vox=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


def test_host_region_keeps_away_from_lesions_and_invalid_voxels():
    lab = np.zeros((20, 20, 20), np.int64)
    lab[2:18, 2:18, 2:18] = ORGAN
    lab[9, 9, 9] = T
    valid = np.ones(lab.shape, bool)
    valid[:, :, 15:] = False
    region = host_region(lab, ORGAN, lesion_classes=[T], keep_away_vox=2, valid=valid)
    assert region[5, 5, 5] and not region[9, 9, 9]
    assert not region[11, 11, 11] and region[12, 9, 9]   # Chebyshev distance 2 vs 3
    assert not region[5, 5, 13] and region[5, 5, 12]
    assert not region[0, 0, 0]
    np.testing.assert_array_equal(host_region(lab, ORGAN, keep_away_vox=2), lab == ORGAN)

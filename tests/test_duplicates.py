import io

import numpy as np
import pytest
from PIL import Image

from conftest import noise_image
from imgclf.duplicates import (
    DUPLICATE,
    LABEL_CONFLICT,
    NEAR_DUPLICATE,
    Member,
    find_groups,
    hamming_pairs,
    lookalike_groups,
    summarize_groups,
)
from imgclf.prepare import fingerprint


def member(source: str, image: Image.Image) -> Member:
    prints = fingerprint(image)
    return Member(
        source, source.split("/")[0], prints.content, prints.phash, prints.colour, prints.pixels
    )


def reencoded(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def distance(a: Image.Image, b: Image.Image) -> int:
    return bin(int(fingerprint(a).phash, 16) ^ int(fingerprint(b).phash, 16)).count("1")


@pytest.mark.parametrize(
    "copy",
    [
        lambda image: reencoded(image, 60),
        lambda image: image.resize((image.width // 2, image.height // 2)),
        lambda image: reencoded(image.resize((image.width * 3, image.height * 3)), 85),
    ],
    ids=["re-encoded at quality 60", "half size", "triple size, re-encoded"],
)
def test_copies_are_near_duplicates(copy):
    original = noise_image(1, (128, 96))
    assert distance(original, copy(original)) <= 4


def test_different_pictures_are_far_apart():
    distances = [distance(noise_image(a), noise_image(b)) for a in range(8) for b in range(a)]
    assert min(distances) > 10


def test_hamming_pairs_finds_each_close_pair_once():
    hashes = ["0000000000000000", "0000000000000003", "ffffffffffffffff", "000000000000000f"]

    first, second = hamming_pairs(hashes, max_distance=2)

    assert sorted(zip(first.tolist(), second.tolist(), strict=True)) == [(0, 1), (1, 3)]


def test_hamming_pairs_spans_blocks():
    hashes = [f"{i:016x}" for i in range(0, 600)] + ["0000000000000000"]
    first, second = hamming_pairs(hashes, max_distance=0)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [(0, 600)]


def test_copies_in_one_class_keep_the_largest():
    original = noise_image(2, (128, 96))
    members = [
        member("cats/a_small.jpg", original.resize((64, 48))),
        member("cats/b_big.png", original),
        member("cats/c_same.png", original.copy()),
        member("cats/other.png", noise_image(3)),
    ]

    groups = find_groups(members, max_distance=4)

    assert len(groups) == 1
    group = groups[0]
    assert group.kept.source == "cats/b_big.png"  # most pixels; ties go to the first path
    reasons = {m.source: group.reason(m) for m in group.members}
    assert reasons == {
        "cats/a_small.jpg": NEAR_DUPLICATE, "cats/b_big.png": None, "cats/c_same.png": DUPLICATE,
    }


def test_same_picture_in_two_classes_is_a_conflict():
    picture = noise_image(4)
    members = [member("cats/x.png", picture), member("dogs/x.png", reencoded(picture, 90))]

    (group,) = find_groups(members, max_distance=4)

    assert group.kept is None
    assert group.labels == ["cats", "dogs"]
    assert {group.reason(m) for m in group.members} == {LABEL_CONFLICT}


def test_chains_of_near_duplicates_form_one_group():
    members = [member(f"cats/{i}.png", noise_image(5)) for i in range(3)]
    hashes = [int(m.phash, 16) for m in members]
    # Fake a chain 0 - 1 - 2 in which 0 and 2 differ by 4 bits and neighbours by 2.
    chained = [
        Member(m.source, m.label, m.content + str(i), f"{h ^ ((1 << (2 * i)) - 1):016x}",
               m.colour, m.pixels)
        for i, (m, h) in enumerate(zip(members, hashes, strict=True))
    ]
    assert len(find_groups(chained, max_distance=2)) == 1
    assert find_groups(chained, max_distance=1) == []


def test_group_ids_do_not_depend_on_order():
    members = [member("cats/a.png", noise_image(6)), member("cats/b.png", noise_image(6))]
    assert find_groups(members, 4)[0].id == find_groups(members[::-1], 4)[0].id


def test_summary_counts_every_reason():
    picture = noise_image(7)
    members = [
        member("cats/a.png", picture), member("cats/b.png", picture),
        member("cats/c.png", noise_image(8)), member("dogs/c.png", noise_image(8)),
    ]

    summary = summarize_groups(find_groups(members, 4))

    assert summary == {
        "groups": 2, "exact_groups": 2, "label_conflict_groups": 1,
        "dropped": {DUPLICATE: 1, NEAR_DUPLICATE: 0, LABEL_CONFLICT: 2},
    }


def test_no_members_no_groups():
    assert find_groups([], 4) == []
    assert hamming_pairs([], 4)[0].size == 0
    assert np.array_equal(hamming_pairs(["00"], 4)[0], [])


def test_colour_alone_tells_images_apart():
    ramp = np.tile(np.linspace(0, 1, 64), (48, 1))[..., None]  # (48, 64, 1)
    red = Image.fromarray((ramp * [255, 0, 0]).astype(np.uint8))
    green = Image.fromarray((ramp * [0, 255, 0]).astype(np.uint8))
    members = [
        member("cats/flat red.png", Image.new("RGB", (64, 48), (220, 30, 30))),
        member("dogs/flat blue.png", Image.new("RGB", (64, 48), (30, 30, 220))),
        member("cats/ramp red.png", red),
        member("birds/ramp green.png", green),
    ]
    assert distance(red, green) <= 4  # the perceptual hash alone would match them

    assert find_groups(members, max_distance=4) == []


def test_many_identical_hashes_form_one_group():
    blank = Image.new("RGB", (64, 48), (128, 128, 128))
    members = [member(f"cats/blank {i:04d}.png", blank) for i in range(3000)]
    members.append(member("cats/other.png", noise_image(9)))

    (group,) = find_groups(members, max_distance=4)

    assert len(group.members) == 3000
    assert group.kept.source == "cats/blank 0000.png"


def test_recoloured_copy_is_a_lookalike_not_a_duplicate():
    photo = noise_image(10, (128, 96))
    grey = photo.convert("L").convert("RGB")
    members = [
        member("cats/colour.png", photo),
        member("cats/grey.png", grey),
        member("dogs/grey.png", grey.copy()),
        member("cats/other.png", noise_image(11)),
    ]

    assert [g.labels for g in find_groups(members, 4)] == [["cats", "dogs"]]  # the two greys
    lookalikes = lookalike_groups(members, 4)
    assert set(lookalikes) == {"cats/colour.png", "cats/grey.png"}  # one class only
    assert lookalikes["cats/colour.png"] == lookalikes["cats/grey.png"]

import pytest

from shards import format as fmt


def test_shard_name_roundtrip():
    assert fmt.shard_name("c2f", 7) == "c2f-000007.tar"
    assert fmt.parse_shard_name("/x/c2f-000007.tar") == ("c2f", 7)
    assert fmt.parse_shard_name("c2f-7.tar") is None
    with pytest.raises(ValueError):
        fmt.shard_name("c2f", -1)


@pytest.mark.parametrize(
    "rel, imagenet, key",
    [
        ("n01440764/n01440764_10026.JPEG", True, "n01440764_10026"),
        ("a/b/x.y.jpg", False, "a__b__x_y"),
        ("a/x.jpg", False, "a__x"),
        ("b/x.jpg", False, "b__x"),
        ("sp ace/é.png", False, "sp_ace___"),
    ],
)
def test_sample_key(rel, imagenet, key):
    assert fmt.sample_key(rel, imagenet) == key
    assert "." not in key


def test_split_member():
    assert fmt.split_member("n01_1.sem.png") == ("n01_1", "sem.png")
    assert fmt.split_member("d/n01_1.jpg") == ("d/n01_1", "jpg")


@pytest.mark.parametrize(
    "name, bad",
    [
        ("/etc/passwd", True),
        ("../x.jpg", True),
        ("a/../../x", True),
        ("C:\\x.jpg", True),
        ("k.jpg", False),
        ("a..b.jpg", False),
    ],
)
def test_unsafe_member_name(name, bad):
    assert (fmt.unsafe_member_name(name) is not None) == bad


def test_semantic_dtype_and_ignore():
    assert fmt.semantic_dtype(150) == "uint8" and fmt.semantic_ignore(150) == 255
    assert fmt.semantic_dtype(1000) == "uint16" and fmt.semantic_ignore(1000) == 65535

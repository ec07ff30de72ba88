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


@pytest.mark.parametrize(
    "key, why",
    [
        ("n01440764_10026", None),
        ("a-b_C9", None),
        ("dir/k", "key holds a '/' (c2f keys name no directories)"),
        ("k y", "key holds characters outside [A-Za-z0-9_-]"),
        ("caf\u00e9", "key holds characters outside [A-Za-z0-9_-]"),
        ("", "empty key"),
    ],
)
def test_key_rules(key, why):
    assert fmt.bad_key(key) == why


def test_every_generated_key_follows_the_rules():
    for rel in ["n01440764/n01440764_1.JPEG", "a b/c.d.jpg", "caf\udce9/x.png", "\u732b/\u732b.jpg"]:
        assert fmt.bad_key(fmt.sample_key(rel, imagenet=False)) is None


def test_display_makes_undecodable_names_printable():
    assert fmt.display("caf\udce9.JPEG") == "caf\\udce9.JPEG"


def test_format_md_lists_every_table_column_as_the_contract_says():
    """docs/FORMAT.md's table of the per-sample Parquet columns is the contract's, word for word."""
    import dataclasses
    from pathlib import Path

    from shards.samples import SampleRow, columns, schema

    doc = (Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md").read_text()
    for (name, tp, nullable), f in zip(columns(), dataclasses.fields(SampleRow), strict=True):
        kind = {str: "string", int: "int64", float: "double"}[tp] + ("" if nullable else ", never null")
        assert f"| `{name}` | {kind} | {f.metadata['doc']} |" in doc, name
    assert schema().names == [f.name for f in dataclasses.fields(SampleRow)]


def test_table_names_sit_beside_their_shards():
    assert fmt.table_name("c2f-000007.tar") == "c2f-000007.parquet"
    assert fmt.parse_table_name("c2f-000007.parquet") == "c2f-000007.tar"
    assert fmt.parse_table_name("samples.parquet") is None and fmt.parse_table_name("c2f-000007.tar") is None
    assert fmt.parse_shard_name("c2f-000007.parquet") is None  # no shard listing ever sees a table


def test_a_table_keeps_a_file_name_that_is_not_utf8():
    """Parquet strings are UTF-8: a name with undecodable bytes (PEP 383) keeps them as escapes."""
    from shards.samples import InputRef, read_rows, shard_rows, table_bytes

    name = "n0/caf\udce9.JPEG"
    rows = shard_rows("c2f-000000.tar", [InputRef("caf_", name, None, None, 5)], {}, {"caf_": ("read", name)}, {})
    (row,) = read_rows(table_bytes(rows))
    assert row.source == row.reason == fmt.display(name) == "n0/caf\\udce9.JPEG" and row.status == "quarantined"

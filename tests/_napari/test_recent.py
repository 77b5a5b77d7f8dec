"""Recent checkpoint paths persist in a small JSON file, whose folder an env var can move."""

from napari_vitcam._napari.recent import CONFIG_DIR_VARIABLE, FILE_NAME, RecentPaths, config_dir


def test_the_env_var_moves_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(tmp_path / "config"))
    assert config_dir() == tmp_path / "config"
    assert RecentPaths.default().file == tmp_path / "config" / FILE_NAME


def test_most_recent_first_without_duplicates_and_limited(tmp_path):
    store = RecentPaths(tmp_path / "sub" / "recent.json", limit=3)
    assert store.load() == []
    for name in ("a", "b", "c", "a", "d"):
        store.add(tmp_path / name)
    assert store.load() == [str(tmp_path / n) for n in ("d", "a", "c")]
    assert RecentPaths(store.file, limit=3).load() == store.load()  # a new session reads the same


def test_a_damaged_file_reads_as_empty(tmp_path):
    file = tmp_path / "recent.json"
    file.write_text("{not json")
    assert RecentPaths(file).load() == []
    file.write_text('{"a": 1}')
    assert RecentPaths(file).load() == []
    assert RecentPaths(file).add(tmp_path / "x") == [str(tmp_path / "x")]

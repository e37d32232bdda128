"""The builder environment and /etc texts, checked against a real Nix 2.8 record."""

from __future__ import annotations

from pathlib import Path

from goalkeeper.sandbox import env as nixenv

RECORD = Path(__file__).parents[1] / "data" / "sandbox" / "nix-2.8-record.txt"


def _record_section(name: str) -> list[str]:
    lines = RECORD.read_text().splitlines()
    start = lines.index(f"== {name}") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("=="))
    return lines[start:end]


def _record_env() -> dict[str, str]:
    return dict(line.split("=", 1) for line in _record_section("env"))


DRV_ENV = {  # the env of tests/data/sandbox/record.nix's derivation, minus args
    "builder": "/bin/sh", "name": "rec", "passAsFile": "big", "big": "hello",
    "out": "/nix/store/qqmjvfiwscrgvabf8xwqzci12awc5crj-rec", "system": "x86_64-linux",
}


def test_env_matches_nix_sandbox():
    built = nixenv.builder_env(drv_env=DRV_ENV, store_dir="/nix/store", build_cores=2,
                               build_dir_in_sandbox="/build", fixed_output=False,
                               structured_attrs=False, caller_env={"TERM": "dumb-caller"})
    ours = dict(built.env)
    recorded = _record_env()
    # The recording script exported its own PATH before running `env`.
    assert recorded.pop("PATH") == "/usr/bin:/bin"
    assert ours.pop("PATH") == "/path-not-set"
    assert ours == recorded
    # TERM is Nix's constant, not the caller's (the record was made with TERM=dumb-caller).
    assert ours["TERM"] == "xterm-256color"
    assert [k for k, _ in built.env] == sorted(k for k, _ in built.env)
    assert built.build_dir_files == (
        (".attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a", b"hello"),)


def test_fixed_output_env():
    caller = {"http_proxy": "http://proxy:3128", "SECRET": "x"}
    built = dict(nixenv.builder_env(
        drv_env={"out": "/nix/store/x-fo", "impureEnvVars": "http_proxy  ftp_proxy\n"},
        store_dir="/nix/store", build_cores=4, build_dir_in_sandbox="/build",
        fixed_output=True, structured_attrs=False, caller_env=caller).env)
    assert built["NIX_OUTPUT_CHECKED"] == "1"
    assert built["http_proxy"] == "http://proxy:3128" and built["ftp_proxy"] == ""
    assert "SECRET" not in built and built["NIX_BUILD_CORES"] == "4"


def test_structured_attrs_skip_the_drv_env():
    built = dict(nixenv.builder_env(
        drv_env={"__json": "{}", "out": "/nix/store/x"}, store_dir="/nix/store",
        build_cores=1, build_dir_in_sandbox="/tmp/nix-build-x.drv-0", fixed_output=False,
        structured_attrs=True).env)
    assert "__json" not in built and "out" not in built
    assert built["NIX_BUILD_TOP"] == built["TMPDIR"] == "/tmp/nix-build-x.drv-0"


def test_rewrites_apply_to_values_and_pass_as_file():
    rewrites = {"/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9": "/nix/store/abc-x"}
    built = nixenv.builder_env(
        drv_env={"out": "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9",
                 "passAsFile": "f", "f": "at /1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"},
        store_dir="/nix/store", build_cores=1, build_dir_in_sandbox="/build",
        fixed_output=False, structured_attrs=False, rewrites=rewrites)
    assert dict(built.env)["out"] == "/nix/store/abc-x"
    assert built.build_dir_files[0][1] == b"at /nix/store/abc-x"


def test_rewrites_resume_at_the_replacement_as_nix_does():
    # Nix's rewriteStrings searches again from the start of what it just put in, so an
    # overlapping pattern keeps matching: "aabb" -> "aaab" -> "aaaa".
    built = nixenv.builder_env(
        drv_env={"x": "aabb", "passAsFile": "f", "f": "aabb"}, store_dir="/nix/store",
        build_cores=1, build_dir_in_sandbox="/build", fixed_output=False,
        structured_attrs=False, rewrites={"aab": "aaa"})
    assert dict(built.env)["x"] == "aaaa"
    assert built.build_dir_files[0][1] == b"aaaa"


def test_etc_files_match_nix():
    etc = "\n".join(_record_section("etc")) + "\n"
    assert nixenv.etc_group().decode() in etc
    assert nixenv.ETC_HOSTS.decode() in etc
    assert nixenv.etc_passwd().decode() in etc

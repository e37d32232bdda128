"""`checkDerivationOutputs` (local-store.cc): a `.drv` being registered must name its outputs correctly.

Nix refuses to register a derivation whose input-addressed output paths are
not the ones `hashDerivationModulo` gives, or whose output env vars disagree
with its output paths, so a store never holds a drv that lies about its outputs.
"""

from __future__ import annotations

from .derivation import CAFixed, Derivation, InputAddressed
from .derivation_hash import DrvHashCache, ReadDrv, hash_derivation_modulo
from .errors import BadStorePath
from .paths import StoreDir, StorePath
from .valid_paths import RegistrationError


def check_derivation_outputs(
    store_dir: StoreDir,
    drv_path: StorePath,
    drv: Derivation,
    read_drv: ReadDrv,
    cache: DrvHashCache | None = None,
) -> None:
    """Raise `RegistrationError` with Nix's message if an output path or env var is wrong."""
    drv_name = drv_path.derivation_name()
    printed = store_dir.print(drv_path)

    def env_has_right_path(actual: StorePath, var: str) -> None:
        value = drv.env.get(var)
        try:
            ok = value is not None and store_dir.parse(value) == actual
        except BadStorePath:
            ok = False
        if not ok:
            raise RegistrationError(
                f"derivation '{printed}' has incorrect environment variable '{var}', "
                f"should be '{store_dir.print(actual)}'"
            )

    drv.type()  # asserts a proper combination of output kinds
    hashes = None
    for name, output in drv.outputs.items():
        if isinstance(output, InputAddressed):
            if hashes is None:  # somewhat expensive, so only when needed
                hashes = hash_derivation_modulo(store_dir, drv, True, read_drv, cache).hashes
            digest = hashes.get(name)
            if digest is None:
                raise RegistrationError(
                    f"derivation '{printed}' has unexpected output '{store_dir.print(output.path)}' "
                    f"(local-store / hashesModulo) named '{name}'"
                )
            recomputed = store_dir.make_output_path(name, digest, drv_name)
            if output.path != recomputed:
                raise RegistrationError(
                    f"derivation '{printed}' has incorrect output '{store_dir.print(output.path)}', "
                    f"should be '{store_dir.print(recomputed)}'"
                )
            env_has_right_path(output.path, name)
        elif isinstance(output, CAFixed):
            # Nix checks the env var against the path made with the bare drv name, for every output name.
            path = store_dir.make_fixed_output_path(output.method == "recursive", output.hash, drv_name)
            env_has_right_path(path, name)

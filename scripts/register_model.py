"""Register a model version folder (metadata.json + artifact) in an MLflow model registry.

    python scripts/register_model.py --tracking-uri http://127.0.0.1:5000 --alias champion
    python scripts/register_model.py models/breast-cancer/2 --alias challenger

The folder's files are logged as the artifacts of one MLflow run (experiment
``model-registrations``) and registered as the next version of the registered model (by default
the name in its metadata.json; created when missing); ``--alias`` points aliases at it. A worker
serves it with ``MODEL_URI=models:/<name>@<alias>``. Prints the version number registered.
Needs the mlflow extra (``pip install '.[mlflow]'``); nothing is fetched from outside.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "model-registrations"
ARTIFACT_PATH = "model"


def register(tracking_uri: str, folder: Path, name: str | None = None, aliases: tuple[str, ...] = ()) -> str:
    """Log ``folder`` and register it; returns the new version number."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is the version number
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports to MLflow's makers
    import mlflow

    metadata = json.loads((folder / "metadata.json").read_text())
    name = name or str(metadata["name"])
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"{name} from {folder.name}", tags={"source_folder": str(folder)})
    client.log_artifacts(run.info.run_id, str(folder), ARTIFACT_PATH)
    client.log_param(run.info.run_id, "format", metadata.get("format", ""))
    client.set_terminated(run.info.run_id)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description=str(metadata.get("description", "")))
    version = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{ARTIFACT_PATH}",
        run_id=run.info.run_id,
        description=str(metadata.get("description", "")),
    )
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / "models" / "breast-cancer" / "1")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    parser.add_argument("--name", help="registered model name (default: metadata.json's name)")
    parser.add_argument("--alias", action="append", default=[], help="point this alias at the new version (repeatable)")
    args = parser.parse_args(argv)
    if not (args.folder / "metadata.json").is_file():
        print(f"register_model: {args.folder} has no metadata.json", file=sys.stderr)
        return 2
    version = register(args.tracking_uri, args.folder, args.name, tuple(args.alias))
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())

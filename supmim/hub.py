"""Upload a finished ``supmim export`` folder to the Hugging Face Hub.

Why not ``timm.models.push_to_hf_hub``: it re-saves the model into a temporary folder of its
own, writes timm's generic README (and only when the repo has none, so a re-push keeps a stale
card), pickles ``pytorch_model.bin`` beside the safetensors by default, and has no way to add
``supmim_config.yaml``. Uploading the folder :func:`supmim.export.export_run` already wrote
and checked (with ``HfApi.upload_folder``, the call timm ends with) sends exactly our files:
``config.json`` + ``model.safetensors`` (timm's ``save_for_hf`` layout, which
``timm.create_model('hf-hub:REPO', pretrained=True)`` loads), our model card ``README.md`` and
the run's ``supmim_config.yaml``; ``allow_patterns`` names them, so nothing else in the folder
goes. The token is the usual one: ``HF_TOKEN`` or ``hf auth login``.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError

from supmim.errors import SupmimError

#: what a push uploads: the timm layout, our model card and the run's configuration
HUB_FILES = ("config.json", "model.safetensors", "README.md", "supmim_config.yaml")


class HubError(SupmimError):
    """The Hub refused the upload, or no token is available."""


def hub_token(token: str | None = None) -> str:
    """``token``, else ``HF_TOKEN`` / the ``hf auth login`` token; a one-line error if none."""
    found = token or get_token()
    if not found:
        raise HubError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token "
                       "with write access) and push again")
    return found


def push_export(folder: str | Path, repo_id: str, *, private: bool = False,
                revision: str | None = None, commit_message: str = "Add supmim export",
                token: str | None = None) -> str:
    """Upload :data:`HUB_FILES` of the export ``folder`` to the model repo ``repo_id``
    (created if missing; ``private`` applies only then). ``revision``: a branch, created from
    main if missing. Returns the commit's URL."""
    folder = Path(folder)
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise HubError(f"'{folder}' is not a supmim timm export (no {', '.join(missing)}); "
                       "write one with `supmim export RUN --out E` first")
    api = HfApi(token=hub_token(token), library_name="supmim")
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                   allow_patterns=list(HUB_FILES), revision=revision,
                                   commit_message=commit_message)
    except (HfHubHTTPError, HFValidationError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"push to '{repo_id}' failed: {first}. Check the repo name "
                       "(OWNER/NAME), the token's write access and the network; the local "
                       f"export '{folder}' is complete and can be pushed again") from err
    return str(getattr(commit, "commit_url", commit))

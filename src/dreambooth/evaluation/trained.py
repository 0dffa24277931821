"""What a bench run's model was trained on: the identifier and class noun its ``training_args.json``
records, so that the DreamBench prompts say the words the model learned (not a default ``sks``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import progress
from ..errors import UserError
from ..outputs import TRAINING_ARGS_FILE
from ..models.specs import training_args
from ..models.tokens import common_words, identifier_candidates, identifier_words, subject_identifier


@dataclass(frozen=True)
class TrainedSubject:
    identifier: str | None      # the instance prompt's identifier word (subject_identifier); None: no single one
    class_name: str | None      # the class prompt's noun(s), where a class prompt was given
    instance_prompt: str
    record: Path                # the training_args.json read
    candidates: tuple[str, ...] = ()    # the words it could be (identifier_candidates), for the message


def check_identifier_known(trained: TrainedSubject | None, identifier: str | None) -> None:
    """A one-line error where the model's record names no single identifier and none was given: the
    protocol's prompts would say the wrong words."""
    if identifier is None and trained is not None and trained.identifier is None:
        seen = f" (it could be {' or '.join(trained.candidates)})" if trained.candidates else ""
        raise UserError(f"--identifier is required: the instance prompt '{trained.instance_prompt}' in "
                        f"{trained.record} has no single identifier word{seen}; give the one the model learned")


def trained_subject(folder: str | Path) -> TrainedSubject | None:
    """The subject a ``dreambooth train`` output was trained on; None for any other model."""
    folder = Path(folder).expanduser()
    if folder.is_file():        # a LoRA output's kohya file (OUTPUT/NAME.safetensors): its folder's record
        folder = folder.parent
    if not (folder / TRAINING_ARGS_FILE).is_file():
        return None
    try:
        args = training_args(folder)
    except UserError:
        return None
    instance, klass = args.get("instance_prompt"), args.get("class_prompt")
    if not isinstance(instance, str) or not instance.strip():
        return None
    klass = klass if isinstance(klass, str) and klass.strip() else None
    class_words = identifier_words(klass) if klass else []      # 'a photo of a dog' -> ['dog']
    return TrainedSubject(subject_identifier(instance, klass), " ".join(class_words) or None, instance,
                          folder / TRAINING_ARGS_FILE, tuple(identifier_candidates(instance, klass, common_words())))


def first_trained_subject(sources: Iterable[str | Path | None]) -> TrainedSubject | None:
    """The first of ``sources`` (LoRA output folders, then the model) that records a subject."""
    for source in sources:
        if source:
            found = trained_subject(source)
            if found is not None:
                return found
    return None


def pipeline_sources(pipeline) -> list[Path]:
    """The folders a generation pipeline was loaded from: its LoRAs first (a LoRA output is the
    subject on a base model), then the model itself."""
    sources = []
    for tag in getattr(pipeline, "default_loras", []):
        try:
            sources.append(Path(pipeline.library.find(tag.name).source))
        except (UserError, AttributeError):
            pass
    info = getattr(pipeline, "info", None)
    if info is not None and info.path is not None:
        sources.append(Path(info.path))
    return sources


def resolve_subject(trained: TrainedSubject | None, identifier: str | None, class_name: str | None,
                    default_identifier: str) -> tuple[str, str | None]:
    """(identifier, class): as given, else as the model was trained, else ``default_identifier``;
    a given word the training record contradicts is said, since the prompts then miss the subject."""
    check_identifier_known(trained, identifier)
    if trained is not None:
        where = f"{trained.record} (instance prompt '{trained.instance_prompt}')"
        if identifier is None and trained.identifier:
            identifier = trained.identifier
            progress.message(f"--identifier {identifier}: as the model was trained, from {where}")
        elif identifier and trained.identifier and identifier.lower() != trained.identifier.lower():
            progress.warn(f"--identifier {identifier}: the model was trained with '{trained.identifier}' ({where}); "
                          "the prompts say what you gave")
        if class_name is None and trained.class_name:
            class_name = trained.class_name
            progress.message(f"--class {class_name}: from the class prompt in {trained.record}")
        elif class_name and trained.class_name and class_name.lower() != trained.class_name.lower():
            progress.warn(f"--class {class_name}: the model's class prompt says '{trained.class_name}' "
                          f"({trained.record}); the prompts say what you gave")
    return identifier or default_identifier, class_name

"""The Health Agent. What other layers use: the graph (build_graph, its runtime context and input
state) and the intake of a turn's uploads; the rest of the package is internal."""

from agents.budget import MessageTooLong, check_message
from agents.context import TurnContext
from agents.graph import build_graph, start_screen
from agents.intake import (
    Intake,
    StoredStudy,
    StudyLink,
    TurnUploads,
    Upload,
    UploadRejected,
    take_series,
    take_study,
    take_uploads,
)
from agents.prompts import DEMO_WEIGHTS_NOTICE
from agents.state import Actor, InputState

__all__ = [
    "DEMO_WEIGHTS_NOTICE",
    "Actor",
    "InputState",
    "Intake",
    "MessageTooLong",
    "StoredStudy",
    "StudyLink",
    "TurnContext",
    "TurnUploads",
    "Upload",
    "UploadRejected",
    "build_graph",
    "check_message",
    "start_screen",
    "take_series",
    "take_study",
    "take_uploads",
]

"""Message models: the public names of SPEC §7 plus the internal actor protocol."""

from messages.audit import AuditRecord
from messages.outcomes import Outcome, Run, Task
from messages.peers import PeerCard
from messages.reasons import Action, Reason
from messages.requests import CancelTask, CreateTask, EnqueueRun, IngressContext, UpdateTask

__all__ = ["Action", "AuditRecord", "CancelTask", "CreateTask", "EnqueueRun", "IngressContext",
           "Outcome", "PeerCard", "Reason", "Run", "Task", "UpdateTask"]

"""Who may do what to which records: one pure function, used by every repository.

- a patient reaches only their own records, and sees a read of their study only once a physician signed it;
- a physician reaches the records of patients in their care team, and only a physician signs reads;
- an admin manages users, care teams, adapters and fine-tune jobs, reads the audit log and feedback
  aggregates, and sees no PHI unless the ``admin_phi_access`` setting grants read access.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from memory.schema import Role


class Resource(enum.StrEnum):
    patient = "patient"
    consultation = "consultation"
    message = "message"
    study = "study"
    read = "read"
    feedback = "feedback"
    feedback_aggregate = "feedback_aggregate"
    adapter = "adapter"
    job = "job"
    audit = "audit"
    user = "user"
    care_team = "care_team"
    notification = "notification"  # audited when written; a user reads only their own


class Action(enum.StrEnum):
    read = "read"
    write = "write"
    sign = "sign"


class Relation(enum.StrEnum):
    """How the actor relates to the patient whose record it is."""

    own = "own"  # the actor is this patient
    care_team = "care_team"  # the actor is a physician in this patient's care team
    none = "none"  # anyone else
    not_patient_data = "not_patient_data"


PATIENT_DATA = frozenset(
    {
        Resource.patient,
        Resource.consultation,
        Resource.message,
        Resource.study,
        Resource.read,
        Resource.feedback,
    }
)
ADMIN_RESOURCES = frozenset(
    {
        Resource.feedback_aggregate,
        Resource.adapter,
        Resource.job,
        Resource.audit,
        Resource.user,
        Resource.care_team,
    }
)
# What a patient may do with their own records (the rest of the patient record is staff-maintained).
PATIENT_OWN = {
    Resource.patient: {Action.read},
    Resource.consultation: {Action.read, Action.write},
    Resource.message: {Action.read, Action.write},
    Resource.study: {Action.read, Action.write},
    Resource.read: {Action.read},
    Resource.feedback: {Action.read, Action.write},
}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def decide(
    role: Role, resource: Resource, action: Action, relation: Relation, *, admin_phi_access: bool = False
) -> Decision:
    if resource in PATIENT_DATA:
        if relation is Relation.not_patient_data:
            raise ValueError(f"{resource} is patient data: a relation to the patient is required")
        if role is Role.patient:
            if relation is not Relation.own:
                return Decision(False, "patients reach only their own records")
            if action in PATIENT_OWN[resource]:
                return Decision(True, "own record")
            return Decision(False, f"patients may not {action} a {resource}")
        if role is Role.physician:
            if relation is not Relation.care_team:
                return Decision(False, "the patient is not in this physician's care team")
            if action is Action.sign and resource is not Resource.read:
                return Decision(False, f"a {resource} is not signed")
            return Decision(True, "care team")
        if admin_phi_access and action is Action.read:
            return Decision(True, "admin with PHI access granted by setting")
        return Decision(False, "admins see no PHI")
    if role is Role.admin:
        if action is Action.sign:
            return Decision(False, f"a {resource} is not signed")
        return Decision(True, "administration")
    return Decision(False, f"only admins reach {resource}")

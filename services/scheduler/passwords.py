"""Kept for callers of the old names: passwords and sign-in are the identity room's
(identity/model.py, identity/passwords.py, identity/use_cases.py)."""

from services.scheduler.identity.model import MIN_LENGTH as MIN_LENGTH
from services.scheduler.identity.model import ChangePassword as ChangePassword
from services.scheduler.identity.model import FailureLimiter as FailureLimiter
from services.scheduler.identity.model import SignIn as SignIn
from services.scheduler.identity.model import WrongPassword as WrongPassword
from services.scheduler.identity.passwords import hash_password as hash_password
from services.scheduler.identity.passwords import verify as verify

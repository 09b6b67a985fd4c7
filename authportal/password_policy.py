"""What a new password must be: long enough, not too long, hard to guess (zxcvbn), not the username or the old
password. NIST SP 800-63B style: no composition rules (a digit, a symbol), which make passwords worse.

The directory may have rules of its own (AD's complexity, history, minimum age): those refusals come back
from the backend as `PasswordRejected` and are shown as they are.
"""
from __future__ import annotations

from zxcvbn import zxcvbn

from .config import PasswordPolicyConfig

#: zxcvbn reads at most this many characters (its matching is quadratic; a longer password is long enough).
ZXCVBN_INPUT_LIMIT = 72


class PasswordPolicy:
    def __init__(self, config: PasswordPolicyConfig):
        self.config = config

    def rules(self) -> list[str]:
        """The rules, as the page shows them before the user types."""
        said = [f"At least {self.config.min_length} characters (a few words make a good one), "
                f"at most {self.config.max_length}."]
        if self.config.zxcvbn_min_score:
            said.append("Hard to guess: not a common password, a name, a date or a keyboard pattern.")
        said.append("Not your username, and not your current password.")
        return said

    def problems(self, new: str, confirmation: str, username: str, old: str | None = None) -> list[str]:
        """What is wrong with `new` (empty: it may be used), each problem a sentence a person can act on."""
        if new != confirmation:
            return ["The two new passwords are not the same."]
        found = []
        if len(new) < self.config.min_length:
            found.append(f"The new password is too short: it needs at least {self.config.min_length} characters.")
        elif len(new) > self.config.max_length:
            found.append(f"The new password is too long: at most {self.config.max_length} characters.")
        if any(ord(c) < 32 or ord(c) == 127 for c in new):
            found.append("The new password contains a control character.")
        if new.casefold() == username.casefold():
            found.append("The new password cannot be your username.")
        if old is not None and new == old:
            found.append("The new password must be different from the current one.")
        if not found and self.config.zxcvbn_min_score:
            verdict = zxcvbn(new[:ZXCVBN_INPUT_LIMIT], user_inputs=[username] + ([old] if old else []))
            if verdict["score"] < self.config.zxcvbn_min_score:
                feedback = verdict["feedback"]
                hint = " ".join(filter(None, [feedback.get("warning"), *feedback.get("suggestions", [])]))
                found.append("The new password is too easy to guess." + (f" {hint}" if hint else ""))
        return found

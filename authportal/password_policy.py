"""What a new password must be: long enough, not too long, hard to guess (zxcvbn), not the username or the old
password. NIST SP 800-63B style: no composition rules (a digit, a symbol), which make passwords worse.

The directory may have rules of its own (AD's complexity, history, minimum age): those refusals come back
from the backend as `PasswordRejected` and are shown as they are.

Every rule and refusal is a sentence in the reader's language (gettext; English outside a request).
zxcvbn's own feedback ("Add another word or two…") exists only in English: it is appended to the refusal for
English readers only. Other languages get the translated refusal without it rather than a half-English message
(the rules shown above the form already say what makes a password hard to guess).
"""
from __future__ import annotations

from flask_babel import get_locale, ngettext
from flask_babel import gettext as _
from zxcvbn import zxcvbn

from .config import PasswordPolicyConfig

#: zxcvbn reads at most this many characters (its matching is quadratic; a longer password is long enough).
ZXCVBN_INPUT_LIMIT = 72


class PasswordPolicy:
    def __init__(self, config: PasswordPolicyConfig):
        self.config = config

    def rules(self) -> list[str]:
        """The rules, as the page shows them before the user types."""
        said = [_("At least %(min)d characters (a few words make a good one), at most %(max)d.",
                  min=self.config.min_length, max=self.config.max_length)]
        if self.config.zxcvbn_min_score:
            said.append(_("Hard to guess: not a common password, a name, a date or a keyboard pattern."))
        said.append(_("Not your username, and not your current password."))
        return said

    def problems(self, new: str, confirmation: str, username: str, old: str | None = None) -> list[str]:
        """What is wrong with `new` (empty: it may be used), each problem a sentence a person can act on."""
        if new != confirmation:
            return [_("The two new passwords are not the same.")]
        found = []
        if len(new) < self.config.min_length:
            found.append(ngettext("The new password is too short: it needs at least %(num)d character.",
                                  "The new password is too short: it needs at least %(num)d characters.",
                                  self.config.min_length))
        elif len(new) > self.config.max_length:
            found.append(ngettext("The new password is too long: at most %(num)d character.",
                                  "The new password is too long: at most %(num)d characters.", self.config.max_length))
        if any(ord(c) < 32 or ord(c) == 127 for c in new):
            found.append(_("The new password contains a control character."))
        if new.casefold() == username.casefold():
            found.append(_("The new password cannot be your username."))
        if old is not None and new == old:
            found.append(_("The new password must be different from the current one."))
        if not found and self.config.zxcvbn_min_score:
            verdict = zxcvbn(new[:ZXCVBN_INPUT_LIMIT], user_inputs=[username] + ([old] if old else []))
            if verdict["score"] < self.config.zxcvbn_min_score:
                refusal = _("The new password is too easy to guess.")
                if _english():  # zxcvbn's feedback is English only (see the module docstring)
                    feedback = verdict["feedback"]
                    hint = " ".join(filter(None, [feedback.get("warning"), *feedback.get("suggestions", [])]))
                    refusal += f" {hint}" if hint else ""
                found.append(refusal)
        return found


def _english() -> bool:
    """Whether the reader reads English (also outside a request, where every message is English)."""
    locale = get_locale()
    return locale is None or locale.language == "en"

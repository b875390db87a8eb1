"""Why a message was skipped or failed: the reasons every service writes and reads, in one place.

Events carry them as plain strings (`MessageSkipped.reason`, `MessageFailed.reason`,
`SendRequested.skip_reason`), so a consumer of an older version still reads a newer reason; a
new reason is added here, and only here. A provider's own refusal text is carried as it came
(e.g. "550 mailbox unavailable"); the reasons below are Sendout's.
"""

from __future__ import annotations

from enum import StrEnum


class SkipReason(StrEnum):
    """Nothing was sent to this recipient on this channel, by design."""

    MISSING_ADDRESS = "missing_address"  # no email / phone for the channel
    INVALID_ADDRESS = "invalid_address"  # present but not a usable address
    OPTED_OUT = "opted_out"              # the address opted out (STOP, unsubscribe, operator)
    ABORTED = "aborted"                  # the campaign was aborted before this one went out
    NOT_SENT = "not_sent"                # peer to peer: ended before anyone pressed SEND
    ERASED = "erased"                    # the voter was erased before a retry could go out


class FailReason(StrEnum):
    """Why a message failed without (or despite) a provider's answer; provider refusals carry
    the provider's own text."""

    TEMPLATE_ERROR = "template_error"  # the template could not be rendered for this recipient
    INVALID_ADDRESS = "invalid_address"  # refused at send time (e.g. a line break in it)
    INVALID_HEADER = "invalid_header"  # a line break in a sender or subject
    IN_DOUBT = "in_doubt"              # a provider call may have happened; not sent again
    SEND_ERROR = "send_error"          # an unexpected error sending it

"""Mail through SMTP (the policy's ``mail``): one message per notification, its
``Message-ID`` derived from the event id, so a mail sent twice (a retry after a lost answer, a
redelivered event) is one conversation to the reader's client.

``smtplib`` blocks: each send runs in a worker thread with the socket timeout of the attempt,
so a mail server that hangs holds one thread for at most that long, never the event loop. The
password is read from the environment variable the policy names, never from the policy.
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

import anyio

from confbus.schemas.policy import MailTarget


class MailError(Exception):
    pass


def message(target: MailTarget, subject: str, text: str, event_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = target.sender
    msg["To"] = ", ".join(target.to)
    msg["Subject"] = subject[:200]
    msg["Date"] = formatdate(localtime=False)
    digest = hashlib.sha256(event_id.encode()).hexdigest()[:32]
    msg["Message-ID"] = f"<{digest}@confbus>"
    msg["X-Confbus-Event"] = event_id
    msg.set_content(text)
    return msg


def _send_blocking(target: MailTarget, msg: EmailMessage, timeout: float) -> None:
    password = os.environ.get(target.password_env, "") if target.password_env else ""
    if target.password_env and not password:
        raise MailError(f"the environment variable {target.password_env} is not set")
    with smtplib.SMTP(target.host, target.port, timeout=timeout) as smtp:
        if target.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if target.username:
            smtp.login(target.username, password)
        refused = smtp.send_message(msg)
    if refused:
        raise MailError(f"the server refused {len(refused)} recipient(s)")


async def send_mail(target: MailTarget, msg: EmailMessage, timeout: float) -> None:
    """Send ``msg``; ``TimeoutError`` after ``timeout``, ``MailError``/``OSError``/
    ``smtplib.SMTPException`` when the server says no."""
    if not target.to:
        raise MailError("no recipient")
    with anyio.fail_after(timeout + 1.0):
        await anyio.to_thread.run_sync(_send_blocking, target, msg, timeout, abandon_on_cancel=True)


def where(target: MailTarget) -> str:
    """What may be logged of a mail target: the server, not the recipients."""
    return f"smtp://{target.host}:{target.port}"

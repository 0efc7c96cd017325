"""The one family of MySisterDB errors.

The API turns each into an HTTP error in a single handler (``api/errors.py``); the
worker turns LLM errors into a job's ``error.code``. Messages are for the user, in Japanese.

    MySisterDBError                      500 internal
    ├── InvalidInput                     422 invalid_input
    │   ├── MessageTooLarge              422 message_too_large
    │   └── IdempotencyKeyReused         422 idempotency_key_reused
    ├── Unauthorized                     401 unauthorized (WWW-Authenticate: Bearer)
    ├── Forbidden                        403 forbidden (a person's token on an operator route,
    │   │                                    or a cross-site request)
    │   └── ProxyNeedsToken              403 proxy_needs_token (open mode reached through a
    │                                        proxy: tokens are needed)
    ├── NotFound                         404 not_found (also: another person's conversation
    │                                        or job: no probing which ids exist)
    ├── Conflict                         409 conflict
    ├── PayloadTooLarge                  413 payload_too_large (a body over its limit)
    ├── UriTooLong                       414 uri_too_long (a query string over its limit)
    ├── HeadersTooLarge                  431 headers_too_large (headers over their limit)
    ├── QueueFull                        429 queue_full (Retry-After)
    │   ├── RateLimited                  429 rate_limited (Retry-After): one person's limit
    │   ├── TooManyStreams               429 too_many_streams (Retry-After): one person's
    │   │                                    open event streams and long-polls
    │   └── TooManySignIns               429 too_many_sign_ins (Retry-After): failed sign-ins
    ├── StoreUnavailable                 503 store_unavailable
    └── LLMError                         job error code llm_error
        └── LLMTimeout                   job error code llm_timeout

A job that ends badly carries an ``ErrorCode``; the words the user sees for each code live
here, once, in ``JOB_MESSAGES``.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a job ended without a reply (``error.code`` of a failed or incomplete job)."""

    TIMEOUT = "timeout"
    LLM_TIMEOUT = "llm_timeout"
    LLM_ERROR = "llm_error"
    WORKER_LOST = "worker_lost"
    EXPIRED = "expired"
    STORE_UNAVAILABLE = "store_unavailable"  # Redis went away while the prompt ran
    INTERNAL = "internal"

    @property
    def message(self) -> str:
        return JOB_MESSAGES[self]


JOB_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.TIMEOUT: "応答生成がタイムアウトしました。もう一度試してください。",
    ErrorCode.LLM_TIMEOUT: "Gemini の応答がタイムアウトしました。もう一度試してください。",
    ErrorCode.LLM_ERROR: "応答の生成中にエラーが発生しました。もう一度試してください。",
    ErrorCode.WORKER_LOST: "応答を生成していたプロセスが停止しました。もう一度試してください。",
    ErrorCode.EXPIRED: "混み合っていたため処理を開始できませんでした。もう一度送ってください。",
    ErrorCode.STORE_UNAVAILABLE: ("データストアとの接続が切れたため、応答を完成できませんでした。"
                                  "もう一度試してください。"),
    ErrorCode.INTERNAL: "内部エラーが発生しました。もう一度試してください。",
}


CONVERSATION_NOT_FOUND = "指定された会話は見つかりませんでした。"
JOB_NOT_FOUND = "指定されたジョブは見つかりませんでした。"


class MySisterDBError(Exception):
    status_code = 500
    code = "internal"
    default_message = "サーバー内部でエラーが発生しました。"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message


class InvalidInput(MySisterDBError):
    status_code = 422
    code = "invalid_input"
    default_message = "入力が正しくありません。"


class MessageTooLarge(InvalidInput):
    code = "message_too_large"
    default_message = "メッセージが長すぎます。短くしてもう一度送ってください。"


class IdempotencyKeyReused(InvalidInput):
    """The IETF Idempotency-Key draft: a key reused with a different request is a 422."""

    code = "idempotency_key_reused"
    default_message = ("この Idempotency-Key は別の内容のリクエストですでに使われています。"
                       "新しいキーで送ってください。")


class Unauthorized(MySisterDBError):
    """No valid token or sign-in. The chat page answers it by going to /signin."""

    status_code = 401
    code = "unauthorized"
    default_message = "サインインが必要です。アクセストークンでサインインしてください。"


class Forbidden(MySisterDBError):
    status_code = 403
    code = "forbidden"
    default_message = "この操作は許可されていません。"


class ProxyNeedsToken(Forbidden):
    """Open mode (no token) trusts that only this machine talks to it: a request that came
    through a proxy (forwarding headers, another Host) proves otherwise."""

    code = "proxy_needs_token"
    default_message = ("プロキシ経由のアクセスです。トークンなしでは、このマシンからの直接の"
                       "アクセスしか受け付けません。MYSISTERDB_API_TOKENS を設定して再起動して"
                       "ください。")


class PayloadTooLarge(MySisterDBError):
    status_code = 413
    code = "payload_too_large"
    default_message = "リクエストが大きすぎます。小さくしてもう一度送ってください。"


class UriTooLong(MySisterDBError):
    status_code = 414
    code = "uri_too_long"
    default_message = "URL（クエリ文字列）が長すぎます。"


class HeadersTooLarge(MySisterDBError):
    status_code = 431
    code = "headers_too_large"
    default_message = "リクエストのヘッダーが大きすぎます（Cookie を消すと直ることがあります）。"


class NotFound(MySisterDBError):
    status_code = 404
    code = "not_found"
    default_message = "見つかりませんでした。"


class Conflict(MySisterDBError):
    status_code = 409
    code = "conflict"
    default_message = "この操作は今の状態ではできません。"


class QueueFull(MySisterDBError):
    status_code = 429
    code = "queue_full"
    default_message = "ただいま混み合っています。少し待ってからもう一度送ってください。"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(QueueFull):
    """One person sent more prompts than MYSISTERDB_RATE_LIMIT allows."""

    code = "rate_limited"
    default_message = "短い時間にたくさん送られました。少し待ってからもう一度送ってください。"


class TooManyStreams(QueueFull):
    """One person holds MYSISTERDB_MAX_FOLLOWERS_PER_PERSON event streams and long-polls."""

    code = "too_many_streams"
    default_message = ("同時に開いている応答の待ち受けが多すぎます。ほかのタブや接続を閉じてから"
                       "もう一度試してください。")


class TooManySignIns(QueueFull):
    """Too many failed sign-ins from one address, or in all (core/signin_guard.py)."""

    code = "too_many_sign_ins"
    default_message = ("サインインの失敗が続いたため、しばらく受け付けません。"
                       "少し待ってからもう一度試してください。")


class StoreUnavailable(MySisterDBError):
    status_code = 503
    code = "store_unavailable"
    default_message = "データストアに接続できません。しばらくしてからもう一度試してください。"


class LLMError(MySisterDBError):
    code = ErrorCode.LLM_ERROR.value
    default_message = ErrorCode.LLM_ERROR.message

    def __init__(self, message: str | None = None, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable

    @property
    def error_code(self) -> ErrorCode:
        """The job's error code (an instance may carry its cause's code)."""
        return ErrorCode(self.code)


class LLMTimeout(LLMError):
    code = ErrorCode.LLM_TIMEOUT.value
    default_message = ErrorCode.LLM_TIMEOUT.message

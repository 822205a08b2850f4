"""Who may see the dashboard: the admin token, as a bearer header or as a browser session.

- API clients send ``Authorization: Bearer <admin token>`` (as for the rest of ``/admin``).
- A browser signs in on ``/admin/login`` with the token; the answer sets an HttpOnly,
  SameSite=Strict cookie holding an HMAC of the token (never the token itself), scoped to
  ``/admin``. Changing the token signs every browser out.
- Requests that change something (POST) with the cookie must also carry the header
  ``x-expertmux-csrf: 1``: a cross-site form cannot set a custom header, so a forged request
  fails even where SameSite is not enforced.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from core.errors import AuthenticationError, PermissionDeniedError

COOKIE = "expertmux_admin"
CSRF_HEADER = "x-expertmux-csrf"
STATIC = Path(__file__).resolve().parent / "static"
SESSION_MAX_AGE_S = 12 * 3600


def _token(request: Request) -> str:
    token = request.app.state.settings.admin_token
    if token is None:
        raise AuthenticationError("the admin API is disabled: start expertmux with EXPERTMUX_ADMIN_TOKEN set")
    return token.get_secret_value()


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"expertmux-dashboard-session-v1", hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return bool(a) and secrets.compare_digest(a.encode(), b.encode())


def signed_in(request: Request) -> bool:
    """True for a valid bearer token or session cookie (raises if the admin API is off)."""
    token = _token(request)
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return _same(auth[7:].strip(), token)
    return _same(request.cookies.get(COOKIE, ""), session_value(token))


def require_dashboard(request: Request) -> None:
    """Dependency of every dashboard API route."""
    if not signed_in(request):
        raise AuthenticationError("missing or wrong admin token: send 'Authorization: Bearer <admin token>' "
                                  "or sign in at /admin/login", code="invalid_admin_token")
    uses_cookie = not request.headers.get("authorization", "").lower().startswith("bearer ")
    if uses_cookie and request.method not in ("GET", "HEAD") and request.headers.get(CSRF_HEADER) != "1":
        raise PermissionDeniedError(f"changes made with the dashboard session need the header '{CSRF_HEADER}: 1'",
                                    code="csrf_header_missing")


router = APIRouter(prefix="/admin", include_in_schema=False)


def _page(name: str, status_code: int = 200) -> Response:
    resp = FileResponse(STATIC / name, media_type="text/html", status_code=status_code)
    resp.headers["cache-control"] = "no-store"
    resp.headers["content-security-policy"] = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                                               "script-src 'self'; frame-ancestors 'none'")
    return resp


@router.get("")
async def dashboard_page(request: Request):
    _token(request)  # admin API off: 401 with the reason
    if not signed_in(request):
        return RedirectResponse("/admin/login", status_code=303)
    return _page("dashboard.html")


@router.get("/login")
async def login_page(request: Request):
    return _page("login.html")


@router.post("/login")
async def login(request: Request):
    """Form post of the token; sets the session cookie and goes to the dashboard."""
    token = _token(request)
    form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
    given = (form.get("token") or [""])[0].strip()
    if not _same(given, token):
        return RedirectResponse("/admin/login?error=1", status_code=303)
    resp = RedirectResponse("/admin", status_code=303)
    resp.set_cookie(COOKIE, session_value(token), max_age=SESSION_MAX_AGE_S, path="/admin", httponly=True,
                    samesite="strict", secure=request.url.scheme == "https")
    return resp


@router.post("/logout")
async def logout():
    resp = RedirectResponse("/admin/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/admin")
    return resp


# Assets carry no data: served without a session (the login page needs them). plotly.js comes
# from the installed plotly package, never from a CDN.
_ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript", "overview.js": "text/javascript",
           "tuning.js": "text/javascript", "ledger.js": "text/javascript", "over_time.js": "text/javascript",
           "login.js": "text/javascript"}


@router.get("/static/plotly.min.js")
async def plotly_js():
    from importlib.resources import files

    path = files("plotly") / "package_data" / "plotly.min.js"
    return FileResponse(str(path), media_type="text/javascript", headers={"cache-control": "public, max-age=86400"})


@router.get("/static/{name}")
async def asset(name: str):
    media = _ASSETS.get(name)
    if media is None:
        from core.errors import NotFoundError

        raise NotFoundError(f"no dashboard asset {name!r}")
    return FileResponse(STATIC / name, media_type=media, headers={"cache-control": "no-cache"})

// Shows the error of a failed sign-in (the server redirects back with ?error=1).
"use strict";
if (new URLSearchParams(location.search).get("error")) {
  document.getElementById("login-error").hidden = false;
}

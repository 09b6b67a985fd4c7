/* Security keys and passkeys: the browser's half of a WebAuthn ceremony, for the forms marked data-webauthn.
 *
 * data-webauthn="register" | "authenticate" | "passkey"; data-options: where the portal starts the ceremony
 * (JSON options for navigator.credentials); data-finish: where the key's answer goes. The form's own fields
 * (csrf_token, rd, the key's name) are posted with both. The portal answers {redirect} or {error}.
 * No dependencies; binary fields travel as base64url, as the portal's WebAuthn library reads them.
 */
(function () {
  "use strict";

  function toBytes(base64url) {
    var base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
    var binary = atob(base64 + "===".slice((base64.length + 3) % 4));
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer), binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function decodeDescriptors(list) {
    return (list || []).map(function (c) { return Object.assign({}, c, { id: toBytes(c.id) }); });
  }

  function creationOptions(o) {
    o.challenge = toBytes(o.challenge);
    o.user.id = toBytes(o.user.id);
    o.excludeCredentials = decodeDescriptors(o.excludeCredentials);
    return { publicKey: o };
  }

  function requestOptions(o) {
    o.challenge = toBytes(o.challenge);
    o.allowCredentials = decodeDescriptors(o.allowCredentials);
    return { publicKey: o };
  }

  function encode(credential) {
    var r = credential.response, response = { clientDataJSON: toBase64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toBase64url(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = toBase64url(r.authenticatorData);
      response.signature = toBase64url(r.signature);
      response.userHandle = r.userHandle ? toBase64url(r.userHandle) : null;
    }
    return JSON.stringify({
      id: credential.id, rawId: toBase64url(credential.rawId), type: credential.type, response: response,
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment || null
    });
  }

  /* The page's text for `name` (a data-msg-* attribute of the status element, rendered in the page's language
   * by templates/webauthn_status.html): the script itself has no user-visible text. */
  function text(status, name) {
    return status.getAttribute("data-msg-" + name) || status.getAttribute("data-msg-unknown") || "";
  }

  /* What a person can do about what went wrong. */
  function explain(error, kind, status) {
    switch (error && error.name) {
      case "NotAllowedError":
        return text(status, kind === "register" ? "not-allowed-register" : "not-allowed");
      case "InvalidStateError":
        return text(status, "invalid-state");
      case "NotSupportedError":
        return text(status, "not-supported");
      case "SecurityError":
        return text(status, "security");
      case "AbortError":
        return text(status, "abort");
      default:  // the portal's own (translated) message, or the browser's
        return (error && error.message) || text(status, "unknown");
    }
  }

  function post(url, form, status, extra) {
    var body = new URLSearchParams(new FormData(form));
    Object.keys(extra || {}).forEach(function (k) { body.set(k, extra[k]); });
    return fetch(url, { method: "POST", body: body, credentials: "same-origin",
                        headers: { Accept: "application/json" } })
      .then(function (res) {
        return res.json().catch(function () { return {}; }).then(function (data) {
          if (!res.ok) {
            var e = new Error(data.error || data.message || text(status, "portal").replace("{status}", res.status));
            e.name = "PortalError";
            throw e;
          }
          return data;
        });
      });
  }

  function start(form, status) {
    var kind = form.getAttribute("data-webauthn"), button = form.querySelector("button[type=submit]");
    function show(message) { status.textContent = message; status.hidden = false; }
    if (!window.PublicKeyCredential || !navigator.credentials) {
      show(text(status, "unsupported"));
      button.disabled = true;
      return;
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      status.hidden = true;
      button.disabled = true;
      post(form.getAttribute("data-options"), form, status)
        .then(function (options) {
          return kind === "register"
            ? navigator.credentials.create(creationOptions(options))
            : navigator.credentials.get(requestOptions(options));
        })
        .then(function (credential) {
          return post(form.getAttribute("data-finish"), form, status, { credential: encode(credential) });
        })
        .then(function (answer) { window.location.assign(answer.redirect); })
        .catch(function (error) { show(explain(error, kind, status)); button.disabled = false; });
    });
  }

  document.querySelectorAll("form[data-webauthn]").forEach(function (form) {
    start(form, document.getElementById("webauthn-status"));
  });
})();

-- authportal forward-auth for HAProxy 2.6+ (Lua 5.3, core.httpclient; no third-party Lua modules).
--
-- Asks authportal's /api/forward-auth whether the request may pass, and leaves the
-- answer in transaction variables for the http-request rules in haproxy.cfg to act on:
--
--   txn.auth_status            200, 302, 401 or 403 from the portal (an integer);
--                              0 when the portal could not be asked (any error: deny)
--   txn.auth_location          Location of a 302 (the login page with ?rd=...)
--   txn.auth_www_authenticate  WWW-Authenticate of a 401 (Basic allowed for this URL)
--   txn.auth_remote_user, txn.auth_remote_groups, txn.auth_remote_name,
--   txn.auth_remote_email      the identity of an allowed request (200): one variable per
--                              header of IDENTITY_HEADERS below, named after it
--                              (X-WEBAUTH-USER -> txn.auth_x_webauth_user); unset when the
--                              portal sent no such header or an empty one
--
-- Load it once per thread and call it with the verify URL (one argument):
--
--   global
--       lua-load-per-thread auth-request.lua
--   frontend app
--       http-request lua.authportal http://127.0.0.1:9092/api/forward-auth if protected
--
-- The URL should point at a local `listen` relay with `retries 0` and short timeouts
-- (see haproxy.cfg): HAProxy 2.6's httpclient has no retry or connect-timeout setting
-- of its own and would hold every request for 3-8 s while the portal is down.
--
-- Fail closed: the status variable is 0 until a complete answer has been read, and
-- every step runs inside pcall, so an error of any kind leaves the request denied.

-- Request headers passed through to the portal unchanged: the session cookie,
-- machine credentials (Basic / Bearer), and what tells a browser from a script.
local COPIED_HEADERS = { "cookie", "authorization", "proxy-authorization", "accept", "user-agent", "x-request-id" }

-- Portal response headers kept in txn variables: header name -> variable name.
local ANSWER_VARS = {
    ["location"] = "txn.auth_location",
    ["www-authenticate"] = "txn.auth_www_authenticate",
}

-- The identity headers of an allowed request (200) to keep: the names in the portal's
-- `identity.headers` and in the `headers` of its rules. The portal's defaults are the four
-- Remote-*. Edit this list, or leave the file as it is and name them in haproxy.cfg's
-- global section, before lua-load-per-thread (a bad name then stops HAProxy at start):
--
--   setenv AUTHPORTAL_IDENTITY_HEADERS "X-WEBAUTH-USER X-WEBAUTH-ROLE"
--
-- Each needs its http-request set-header line in haproxy.cfg, and a del-header for the
-- client's copy. Names: letters, digits and "-".
local IDENTITY_HEADERS = { "Remote-User", "Remote-Groups", "Remote-Name", "Remote-Email" }

local function identity_vars_of(names)
    local list = {}
    for name in string.gmatch(names, "[^%s,]+") do
        local lower = string.lower(name)
        if not string.match(lower, "^[%w-]+$") or lower == "status" or ANSWER_VARS[lower] then
            error("authportal identity header " .. string.format("%q", name)
                  .. ": not a header name (letters, digits and -) or one the action uses itself")
        end
        list[#list + 1] = { header = lower, var = "txn.auth_" .. (string.gsub(lower, "-", "_")) }
    end
    if #list == 0 then
        error("authportal: no identity headers listed")
    end
    return list
end

-- Read once per Lua state, on first use (setenv may come after lua-load-per-thread).
local identity_vars = nil
local function identity_headers()
    if identity_vars == nil then
        local names = os.getenv("AUTHPORTAL_IDENTITY_HEADERS") or table.concat(IDENTITY_HEADERS, " ")
        identity_vars = identity_vars_of(names)
    end
    return identity_vars
end
if os.getenv("AUTHPORTAL_IDENTITY_HEADERS") then
    identity_headers()  -- set before this file was loaded: check the names now, at start
end

-- HAProxy header tables map lowercase names to lists indexed from 0.
local function values_of(headers, name)
    local found = {}
    local list = headers[name]
    if list then
        local i = 0
        while list[i] ~= nil do
            found[#found + 1] = list[i]
            i = i + 1
        end
    end
    return found
end

-- A client certificate (`bind ... ssl ... ca-file ... verify optional`), passed as the portal's
-- authentication.client_certificates reads it: X-SSL-Client-Cert in base64 DER and X-SSL-Client-Verify
-- SUCCESS or FAILED:reason. Read from the TLS connection itself, never from a header the client sent
-- (the table of headers is built from scratch); a connection without a certificate passes neither.
local function client_certificate(txn, headers)
    local used = txn.f:ssl_c_used()
    if used ~= true and used ~= 1 then
        return
    end
    local der = txn.f:ssl_c_der()
    if der == nil or der == "" then
        error("a client certificate was used but cannot be read")  -- fail closed: deny
    end
    local verify = txn.f:ssl_c_verify()
    headers["x-ssl-client-cert"] = { txn.c:base64(der) }
    headers["x-ssl-client-verify"] = { verify == 0 and "SUCCESS" or ("FAILED:X509 verify error " .. tostring(verify)) }
end

local function request_headers(txn)
    local incoming = txn.http:req_get_headers()
    local sf = txn.sf
    local host = sf:req_fhdr("host")
    if host == nil or host == "" then
        error("request without a Host header")
    end
    local tls = txn.f:ssl_fc()
    local headers = {
        ["x-forwarded-method"] = { sf:method() },
        ["x-forwarded-proto"] = { (tls == true or tls == 1) and "https" or "http" },
        ["x-forwarded-host"] = { host },
        ["x-forwarded-uri"] = { sf:pathq() },
        -- HAProxy is the edge here: the peer is the client. Client-sent X-Forwarded-*
        -- headers are never passed on (this table is built from scratch).
        ["x-forwarded-for"] = { sf:src() },
    }
    client_certificate(txn, headers)
    for _, name in ipairs(COPIED_HEADERS) do
        local values = values_of(incoming, name)
        if #values > 0 then
            if name == "cookie" then
                headers[name] = { table.concat(values, "; ") }  -- HTTP/2 splits cookies over several lines
            else
                headers[name] = { values[1] }
            end
        end
    end
    return headers
end

local function ask_portal(txn, verify_url)
    local response = core.httpclient():get{
        url = verify_url,
        headers = request_headers(txn),
        timeout = 5000,  -- ms; the relay's own timeouts answer first
    }
    if response == nil or response.status == nil then
        error("no response from " .. verify_url)
    end
    local status = tonumber(response.status)
    local answer = {}
    for header, var in pairs(ANSWER_VARS) do
        local values = values_of(response.headers or {}, header)
        if #values > 0 then
            answer[var] = values[1]
        end
    end
    if status == 200 then
        for _, wanted in ipairs(identity_headers()) do
            local values = values_of(response.headers or {}, wanted.header)
            if #values > 0 and values[1] ~= "" then  -- empty: no header, as nginx does
                answer[wanted.var] = values[1]
            end
        end
    end
    for var, value in pairs(answer) do
        txn:set_var(var, value)
    end
    return status
end

core.register_action("authportal", { "http-req" }, function(txn, verify_url)
    txn:set_var("txn.auth_status", 0)  -- deny unless a complete answer arrives
    local ok, result = pcall(ask_portal, txn, verify_url)
    if ok and result ~= nil then
        txn:set_var("txn.auth_status", result)
    else
        txn:Warning("authportal: verify failed, denying: " .. tostring(result))
        txn:set_var("txn.auth_status", 0)
    end
end, 1)

-- The nginx + Lua reference of benches/e2e.sh: the check a gateway with every key cached does,
-- and nothing more. The keys are looked up by their id, the SHA-256 of the key, as keygate's
-- cache and store hold them (the key itself is never kept): Debian has no lua-resty-string, so
-- SHA256 comes from the libcrypto nginx already links, through LuaJIT's FFI (one call, no
-- allocation but the 32-byte string the table is indexed by).
local ffi = require "ffi"

ffi.cdef [[
unsigned char *SHA256(const unsigned char *data, size_t len, unsigned char *digest);
]]

local digest = ffi.new("unsigned char[32]")
-- One worker, one Lua VM: the digest buffer is never shared between two requests at once.
local function id(key)
    ffi.C.SHA256(key, #key, digest)
    return ffi.string(digest, 32)
end

-- Raw 32-byte id -> app, filled once at start (init_by_lua) from the bench's map file.
local apps = {}

local UNKNOWN = '{"error":"unknown_api_key"}'

local _M = {}

-- load(PATH): the map file's lines, "<id as lowercase hex> <app>", the same file HAProxy reads.
function _M.load(path)
    local count = 0
    for line in io.lines(path) do
        local hex, app = line:match("^(%x+)%s+(%S+)$")
        assert(hex and #hex == 64, "not an id and an app: " .. line)
        apps[hex:gsub("%x%x", function(byte) return string.char(tonumber(byte, 16)) end)] = app
        count = count + 1
    end
    assert(count > 0, "no key in " .. path)
end

-- check(): in the access phase; an unknown (or missing) key gets keygate's 403 and body, a
-- known one goes on to proxy_pass with its app named, as keygate names it.
function _M.check()
    local key = ngx.var.http_x_apikey
    local app = key and apps[id(key)]
    if not app then
        ngx.status = 403
        ngx.header["Content-Type"] = "application/json"
        ngx.header["Content-Length"] = #UNKNOWN
        ngx.print(UNKNOWN)
        return ngx.exit(ngx.HTTP_OK)
    end
    ngx.req.set_header("X-Keygate-App", app)
end

return _M

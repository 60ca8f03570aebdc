/* scripts.c - the Lua scripts: one per state transition, so each is atomic on the server.
 *
 * Every script takes ARGV[1] = the key prefix and builds its key names from it (voxq runs on one
 * Redis, not a cluster; docs/queue.md). The transitions out of `running` (finish, fail,
 * requeue, redelay) all begin with the same guard: the stored lease must equal the caller's,
 * the state must still be running, and LREM of the exact payload from the caller's processing
 * list must remove it. A replay of a script whose reply was lost therefore does nothing (it
 * returns 2 when it sees its own earlier write), and a worker whose lease was taken over writes
 * nothing (0: "lease lost"). */
#include "queue/internal.h"

#define PREAMBLE                                                                                   \
    "local P = ARGV[1]\n"                                                                          \
    "local function reply(to, msg)\n"                                                              \
    "  if type(to) ~= 'string' or to == '' then return end\n"                                      \
    "  local t = redis.call('TYPE', to)\n"                                                         \
    "  if type(t) == 'table' then t = t.ok end\n"                                                  \
    "  if t ~= 'list' and t ~= 'none' then return end\n"                                           \
    "  redis.call('RPUSH', to, msg)\n"                                                             \
    "  redis.call('EXPIRE', to, 3600)\n"                                                           \
    "end\n"                                                                                        \
    "local function emit(id, state, fields, reply_to, terminal)\n"                                 \
    "  local ev = {id = id, state = state}\n"                                                      \
    "  if fields then for k, v in pairs(fields) do ev[k] = v end end\n"                            \
    "  local msg = cjson.encode(ev)\n"                                                             \
    "  redis.call('PUBLISH', P .. 'ev:' .. id, msg)\n"                                             \
    "  if terminal then reply(reply_to, msg) end\n"                                                \
    "end\n"                                                                                        \
    "local function dead_letter(env)\n"                                                            \
    "  redis.call('LPUSH', P .. 'dead', cjson.encode(env))\n"                                      \
    "  redis.call('LTRIM', P .. 'dead', 0, 9999)\n"                                                \
    "end\n"

/* The lease guard shared by the transitions out of running. ARGV: 2 wid, 3 raw, 4 id, 5 lease;
 * `done_state` is the state a replay would find. */
#define GUARD(done_state)                                                                          \
    "local jk = P .. 'job:' .. ARGV[4]\n"                                                          \
    "local st = redis.call('HMGET', jk, 'state', 'lease')\n"                                       \
    "if st[2] ~= ARGV[5] then return 0 end\n"                                                      \
    "if st[1] ~= 'running' then\n"                                                                 \
    "  if st[1] == " done_state " then return 2 end\n"                                             \
    "  return 0\n"                                                                                 \
    "end\n"                                                                                        \
    "if redis.call('LREM', P .. 'proc:' .. ARGV[2], 1, ARGV[3]) == 0 then return 0 end\n"

/* claim: ARGV 2 wid, 3 raw, 4 newraw ('' = keep raw), 5 id, 6 lease, 7 now, 8 queue name,
 * 9 max_attempts, 10 redelay_ms, 11 reply_to, 12 ttl, 13 type, 14 force_delay.
 * Returns {outcome, attempts}: run | done (already succeeded: result re-emitted) | cancelled |
 * dropped (a copy of a job being cancelled on another worker) | delayed (another live worker
 * runs it) | gone (no longer in our processing list).
 * newraw is the canonical payload (queue_job_canonical: an assigned id written in, repeated keys
 * dropped); whatever this claim keeps, in the processing list or in delayed, is that, so the
 * scripts that decode it (reap) read the job the worker parsed, not the last of repeated keys.
 * A cancel key stays until it expires (the producer deletes it to run the id again): every
 * copy claimed meanwhile ends cancelled, never run. A copy of a job that another live worker
 * runs is dropped instead, and the record left to that worker, which sees the cancel at its
 * next heartbeat. */
static const char claim_lua[] = PREAMBLE
    "local wid, raw, newraw, id, lease = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]\n"
    "local keep = raw\n"
    "if newraw ~= '' then keep = newraw end\n"
    "local now = tonumber(ARGV[7])\n"
    "local proc = P .. 'proc:' .. wid\n"
    "local jk = P .. 'job:' .. id\n"
    "local st = redis.call('HMGET', jk, 'state', 'lease', 'worker', 'attempts')\n"
    "local attempts = tonumber(st[4]) or 0\n"
    "if st[1] == 'running' and st[2] == lease then return {'run', attempts} end\n"
    "if not redis.call('LPOS', proc, raw) then return {'gone', attempts} end\n"
    "if st[1] == 'succeeded' then\n"
    "  redis.call('LREM', proc, 1, raw)\n"
    "  local h = redis.call('HGETALL', jk)\n"
    "  local ev = {}\n"
    "  for i = 1, #h, 2 do if h[i] ~= 'lease' then ev[h[i]] = h[i + 1] end end\n"
    "  ev.id = id\n"
    "  ev.duplicate = '1'\n"
    "  local msg = cjson.encode(ev)\n"
    "  redis.call('PUBLISH', P .. 'ev:' .. id, msg)\n"
    "  reply(ARGV[11], msg)\n"
    "  return {'done', attempts}\n"
    "end\n"
    "local busy = st[1] == 'running' and st[3] and st[3] ~= wid and\n"
    "  redis.call('EXISTS', P .. 'hb:' .. st[3]) == 1\n"
    "local ck = P .. 'cancel:' .. id\n"
    "if redis.call('EXISTS', ck) == 1 then\n"
    "  redis.call('LREM', proc, 1, raw)\n"
    "  if busy then return {'dropped', attempts} end\n"
    "  redis.call('HSET', jk, 'state', 'cancelled', 'finished_at', ARGV[7], 'worker', wid)\n"
    "  redis.call('EXPIRE', jk, ARGV[12])\n"
    "  emit(id, 'cancelled', nil, ARGV[11], true)\n"
    "  return {'cancelled', attempts}\n"
    "end\n"
    "if ARGV[14] == '1' or busy then\n"
    "  redis.call('LREM', proc, 1, raw)\n"
    "  redis.call('ZADD', P .. 'delayed', now + tonumber(ARGV[10]), keep)\n"
    "  return {'delayed', attempts}\n"
    "end\n"
    "if st[1] == 'failed' or st[1] == 'rejected' or st[1] == 'cancelled' then\n"
    "  attempts = 0\n"
    "  redis.call('HDEL', jk, 'recoveries', 'error', 'error_code', 'finished_at')\n"
    "end\n"
    "if keep ~= raw then\n"
    "  redis.call('LREM', proc, 1, raw)\n"
    "  redis.call('LPUSH', proc, keep)\n"
    "end\n"
    "if not st[1] then redis.call('HSET', jk, 'created_at', ARGV[7]) end\n"
    "redis.call('PERSIST', jk)\n"
    "redis.call('HSET', jk, 'state', 'running', 'lease', lease, 'worker', wid, 'started_at',\n"
    "  ARGV[7], 'queue', ARGV[8], 'attempts', attempts, 'max_attempts', ARGV[9], 'type',\n"
    "  ARGV[13])\n"
    "emit(id, 'running', {worker = wid, attempt = tostring(attempts + 1)}, nil, false)\n"
    "return {'run', attempts}\n";

/* finish: ARGV 2 wid, 3 raw, 4 id, 5 lease, 6 now, 7 state (succeeded|cancelled), 8 ttl,
 * 9 reply_to, 10 count the attempt (1|0), 11.. field/value pairs for the hash and the event.
 * Ending cancelled leaves the cancel key in force (see claim). */
static const char finish_lua[] = PREAMBLE GUARD("ARGV[7]")
    "local fields = {}\n"
    "local hs = {'state', ARGV[7], 'finished_at', ARGV[6]}\n"
    "for i = 11, #ARGV - 1, 2 do\n"
    "  fields[ARGV[i]] = ARGV[i + 1]\n"
    "  hs[#hs + 1] = ARGV[i]\n"
    "  hs[#hs + 1] = ARGV[i + 1]\n"
    "end\n"
    "if ARGV[10] == '1' then\n"
    "  fields.attempts = tostring(redis.call('HINCRBY', jk, 'attempts', 1))\n"
    "end\n"
    "redis.call('HSET', jk, unpack(hs))\n"
    "redis.call('EXPIRE', jk, ARGV[8])\n"
    "emit(ARGV[4], ARGV[7], fields, ARGV[9], true)\n"
    "return 1\n";

/* fail: ARGV 2 wid, 3 raw, 4 id, 5 lease, 6 now, 7 code, 8 message, 9 permanent, 10 max_attempts,
 * 11 base_ms, 12 cap_ms, 13 jitter in [0,1), 14 ttl, 15 reply_to, 16 raw for the dead letter.
 * Delay = d/2 + jitter*d/2 with d = min(cap, base*2^(n-1)): jittered, yet always growing. */
static const char fail_lua[] = PREAMBLE GUARD("'retrying'")
    "local n = redis.call('HINCRBY', jk, 'attempts', 1)\n"
    "local now = tonumber(ARGV[6])\n"
    "if ARGV[9] == '1' or n >= tonumber(ARGV[10]) then\n"
    "  redis.call('HSET', jk, 'state', 'failed', 'error_code', ARGV[7], 'error', ARGV[8],\n"
    "    'finished_at', ARGV[6])\n"
    "  redis.call('EXPIRE', jk, ARGV[14])\n"
    "  dead_letter({raw = ARGV[16], id = ARGV[4], error_code = ARGV[7], error = ARGV[8],\n"
    "    at = now, worker = ARGV[2], attempts = n})\n"
    "  emit(ARGV[4], 'failed', {error_code = ARGV[7], error = ARGV[8], attempts = tostring(n)},\n"
    "    ARGV[15], true)\n"
    "  return {'failed', n, 0}\n"
    "end\n"
    "local d = math.min(tonumber(ARGV[12]), tonumber(ARGV[11]) * 2 ^ (n - 1))\n"
    "d = math.floor(d / 2 + tonumber(ARGV[13]) * d / 2)\n"
    "redis.call('HSET', jk, 'state', 'retrying', 'error_code', ARGV[7], 'error', ARGV[8],\n"
    "  'next_at', tostring(now + d))\n"
    "redis.call('ZADD', P .. 'delayed', now + d, ARGV[3])\n"
    "emit(ARGV[4], 'retrying', {error_code = ARGV[7], error = ARGV[8], attempts = tostring(n),\n"
    "  delay_ms = tostring(d)}, nil, false)\n"
    "return {'retrying', n, d}\n";

/* reject: ARGV 2 wid, 3 raw, 4 raw for the dead letter, 5 id ('' if none), 6 code, 7 message,
 * 8 now, 9 ttl, 10 reply_to ('' if none). Bad input: dead letter at once, never retried; the
 * job hash, its event and the terminal message when the id is known and names no job that is
 * queued, running or succeeded (a malformed copy must not overwrite a live job's record: its
 * ack would find the lease gone), else the terminal message alone. */
static const char reject_lua[] = PREAMBLE
    "if redis.call('LREM', P .. 'proc:' .. ARGV[2], 1, ARGV[3]) == 0 then return 0 end\n"
    "dead_letter({raw = ARGV[4], error_code = ARGV[6], error = ARGV[7], at = tonumber(ARGV[8]),\n"
    "  worker = ARGV[2], id = ARGV[5]})\n"
    "local st = ARGV[5] ~= '' and redis.call('HGET', P .. 'job:' .. ARGV[5], 'state')\n"
    "if ARGV[5] ~= '' and (not st or st == 'failed' or st == 'rejected' or\n"
    "    st == 'cancelled') then\n"
    "  local jk = P .. 'job:' .. ARGV[5]\n"
    "  redis.call('HSET', jk, 'state', 'rejected', 'error_code', ARGV[6], 'error', ARGV[7],\n"
    "    'finished_at', ARGV[8])\n"
    "  redis.call('EXPIRE', jk, ARGV[9])\n"
    "  emit(ARGV[5], 'rejected', {error_code = ARGV[6], error = ARGV[7]}, ARGV[10], true)\n"
    "else\n"
    "  local msg = {state = 'rejected', error_code = ARGV[6], error = ARGV[7]}\n"
    "  if ARGV[5] ~= '' then msg.id = ARGV[5] end\n"
    "  reply(ARGV[10], cjson.encode(msg))\n"
    "end\n"
    "return 1\n";

/* requeue: ARGV 2 wid, 3 raw, 4 id, 5 lease, 6 queue key. Back to the consuming end of its
 * queue (RPUSH: taken next), attempts unchanged. */
static const char requeue_lua[] = PREAMBLE GUARD("'queued'")
    "redis.call('RPUSH', ARGV[6], ARGV[3])\n"
    "redis.call('HSET', jk, 'state', 'queued')\n"
    "emit(ARGV[4], 'queued', nil, nil, false)\n"
    "return 1\n";

/* redelay: ARGV 2 wid, 3 raw, 4 id, 5 lease, 6 now, 7 delay_ms, 8 state. */
static const char redelay_lua[] = PREAMBLE GUARD("ARGV[8]")
    "local due = tonumber(ARGV[6]) + tonumber(ARGV[7])\n"
    "redis.call('ZADD', P .. 'delayed', due, ARGV[3])\n"
    "redis.call('HSET', jk, 'state', ARGV[8], 'next_at', tostring(due))\n"
    "emit(ARGV[4], ARGV[8], nil, nil, false)\n"
    "return 1\n";

/* heartbeat: ARGV 2 wid, 3 lease_ms, 4 info JSON, 5.. ids held. Returns {cancelled ids,
 * depth normal, depth hi, delayed, dead}: the cancel poll that covers missed pub/sub messages. */
static const char heartbeat_lua[] = PREAMBLE
    "redis.call('SADD', P .. 'workers', ARGV[2])\n"
    "redis.call('SET', P .. 'hb:' .. ARGV[2], ARGV[4], 'PX', ARGV[3])\n"
    "local cancelled = {}\n"
    "for i = 5, #ARGV do\n"
    "  if redis.call('EXISTS', P .. 'cancel:' .. ARGV[i]) == 1 then\n"
    "    cancelled[#cancelled + 1] = ARGV[i]\n"
    "  end\n"
    "end\n"
    "return {cancelled, redis.call('LLEN', P .. 'jobs'), redis.call('LLEN', P .. 'jobs:hi'),\n"
    "  redis.call('ZCARD', P .. 'delayed'), redis.call('LLEN', P .. 'dead')}\n";

/* reap: ARGV 2 wid, 3 now, 4 max_recoveries, 5 limit, 6 lock_ms, 7 default ttl, 8 ttl cap.
 * Whoever wins the reaper lock returns the jobs of workers without a heartbeat (counting a
 * recovery for the job each held; past max_recoveries it is a poison job: dead, its record kept
 * for the job's own result_ttl_s) and promotes due delayed jobs. A payload Lua cjson cannot
 * decode has no id to count under (the worker's parser refuses such payloads, so one is only
 * here if it crashed a worker before the reject or came from elsewhere): its recoveries are
 * counted in P..'reaper:raw:'..sha1(payload), which lives the default ttl, so it too ends in the
 * dead letter list, without a job hash, rather than crash workers forever. */
static const char reap_lua[] = PREAMBLE
    "if not redis.call('SET', P .. 'reaper:lock', ARGV[2], 'NX', 'PX', ARGV[6]) then\n"
    "  return {-1, 0, 0}\n"
    "end\n"
    "local now, maxrec, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local function decode(raw)\n"
    "  local ok, j = pcall(cjson.decode, raw)\n"
    "  if ok and type(j) == 'table' then return j end\n"
    "  return nil\n"
    "end\n"
    "local function ttl_of(job)\n"
    "  local t = job and job.result_ttl_s\n"
    "  if type(t) == 'number' and t >= 1 and t <= tonumber(ARGV[8]) and t == math.floor(t) then\n"
    "    return t\n"
    "  end\n"
    "  return ARGV[7]\n"
    "end\n"
    "local function queue_of(job)\n"
    "  if job and job.priority == 'hi' then return P .. 'jobs:hi' end\n"
    "  return P .. 'jobs'\n"
    "end\n"
    "local moved, dead = 0, 0\n"
    "for _, w in ipairs(redis.call('SMEMBERS', P .. 'workers')) do\n"
    "  if w ~= ARGV[2] and redis.call('EXISTS', P .. 'hb:' .. w) == 0 then\n"
    "    local proc = P .. 'proc:' .. w\n"
    "    local items = redis.call('LRANGE', proc, -limit, -1)\n"
    "    for i = #items, 1, -1 do\n"
    "      local raw = items[i]\n"
    "      local job = decode(raw)\n"
    "      local id = job and type(job.id) == 'string' and job.id or nil\n"
    "      local poison = false\n"
    "      if id then\n"
    "        local jk = P .. 'job:' .. id\n"
    "        local st = redis.call('HMGET', jk, 'state', 'worker')\n"
    "        if st[1] == 'running' and st[2] == w then\n"
    "          local r = redis.call('HINCRBY', jk, 'recoveries', 1)\n"
    "          if r > maxrec then\n"
    "            poison = true\n"
    "            local msg = 'a worker died running this job ' .. r .. ' times (poison job)'\n"
    "            redis.call('HSET', jk, 'state', 'failed', 'error_code', 'poison', 'error', msg,\n"
    "              'finished_at', ARGV[3])\n"
    "            redis.call('EXPIRE', jk, ttl_of(job))\n"
    "            dead_letter({raw = raw, id = id, error_code = 'poison', error = msg, at = now,\n"
    "              worker = w})\n"
    "            emit(id, 'failed', {error_code = 'poison', error = msg}, job.reply_to, true)\n"
    "            dead = dead + 1\n"
    "          else\n"
    "            redis.call('HSET', jk, 'state', 'queued')\n"
    "            emit(id, 'queued', {recoveries = tostring(r)}, nil, false)\n"
    "          end\n"
    "        end\n"
    "      elseif not job then\n"
    "        local rk = P .. 'reaper:raw:' .. redis.sha1hex(raw)\n"
    "        local r = redis.call('INCR', rk)\n"
    "        redis.call('EXPIRE', rk, ARGV[7])\n"
    "        if r > maxrec then\n"
    "          poison = true\n"
    "          redis.call('DEL', rk)\n"
    "          local msg = 'a worker died holding this payload ' .. r ..\n"
    "            ' times (poison job; the scripts cannot decode it as JSON)'\n"
    "          dead_letter({raw = raw, error_code = 'poison', error = msg, at = now, worker = w})\n"
    "          dead = dead + 1\n"
    "        end\n"
    "      end\n"
    "      if not poison then redis.call('RPUSH', queue_of(job), raw) end\n"
    "      redis.call('LREM', proc, -1, raw)\n"
    "      moved = moved + 1\n"
    "    end\n"
    "    if redis.call('LLEN', proc) == 0 then\n"
    "      redis.call('SREM', P .. 'workers', w)\n"
    "      redis.call('DEL', proc)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, limit)\n"
    "for _, raw in ipairs(due) do\n"
    "  redis.call('ZREM', P .. 'delayed', raw)\n"
    "  local job = decode(raw)\n"
    "  redis.call('RPUSH', queue_of(job), raw)\n"
    "  if job and type(job.id) == 'string' then\n"
    "    local jk = P .. 'job:' .. job.id\n"
    "    local s = redis.call('HGET', jk, 'state')\n"
    "    if s == 'retrying' or s == 'waiting_artifact' then\n"
    "      redis.call('HSET', jk, 'state', 'queued')\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {moved, #due, dead}\n";

/* deregister: ARGV 2 wid. Leaves the worker set only with an empty processing list, so jobs
 * still held at exit stay visible to the reaper. */
static const char deregister_lua[] =
    "local P = ARGV[1]\n"
    "redis.call('DEL', P .. 'hb:' .. ARGV[2])\n"
    "if redis.call('LLEN', P .. 'proc:' .. ARGV[2]) == 0 then\n"
    "  redis.call('SREM', P .. 'workers', ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

/* lock renew / release: ARGV 2 lock name, 3 token, 4 ttl_ms. Compare-and-PEXPIRE and
 * compare-and-DEL, so only the holder extends or frees the lock. */
static const char lock_renew_lua[] =
    "local k = ARGV[1] .. 'lock:' .. ARGV[2]\n"
    "if redis.call('GET', k) == ARGV[3] then return redis.call('PEXPIRE', k, ARGV[4]) end\n"
    "return 0\n";
static const char lock_release_lua[] =
    "local k = ARGV[1] .. 'lock:' .. ARGV[2]\n"
    "if redis.call('GET', k) == ARGV[3] then return redis.call('DEL', k) end\n"
    "return 0\n";

static const struct {
    const char *name;
    const char *source;
} scripts[QS_COUNT] = {
    [QS_CLAIM] = {"claim", claim_lua},
    [QS_FINISH] = {"finish", finish_lua},
    [QS_FAIL] = {"fail", fail_lua},
    [QS_REJECT] = {"reject", reject_lua},
    [QS_REQUEUE] = {"requeue", requeue_lua},
    [QS_REDELAY] = {"redelay", redelay_lua},
    [QS_HEARTBEAT] = {"heartbeat", heartbeat_lua},
    [QS_REAP] = {"reap", reap_lua},
    [QS_DEREGISTER] = {"deregister", deregister_lua},
    [QS_LOCK_RENEW] = {"lock_renew", lock_renew_lua},
    [QS_LOCK_RELEASE] = {"lock_release", lock_release_lua},
};

const char *qscript_source(int which) { return scripts[which].source; }
const char *qscript_name(int which) { return scripts[which].name; }

// The demo phone: a real device client of approvald's protocol, in the
// browser. Its ECDSA P-256 key is made by WebCrypto, not extractable, and
// kept in IndexedDB (one key per ?phone= name). Every credential is a
// compact ES256 JWS signed here: the enrollment proof, the bearer
// assertion of the device routes, and each decision. WebCrypto's ECDSA
// signature is already the 64-byte R‖S the protocol asks for.
'use strict';

(function () {
  var root = document.getElementById('phone');
  var PHONE = root.dataset.phone || 'default';
  var DB = 'approvald-demo-phone', STORE = 'phones';
  var LIFETIME = 120; // seconds between iat and exp of assertions and decisions
  var TITLES = {
    login: 'Approve sign-in?',
    verify_property: 'Approve property verification?',
    submit_offer: 'Approve your offer?',
    link_device: 'Approve linking a new device?'
  };
  var $ = function (id) { return document.getElementById(id); };
  var enc = new TextEncoder();
  var rec = null;        // {phone, privateKey, publicKey, deviceId, audience, userId, name}
  var generation = 0;    // bumped to stop the polling loop
  var aborter = null;
  var cards = new Map(); // challenge id -> <li>

  // --- storage -----------------------------------------------------------
  function openDB() {
    return new Promise(function (resolve, reject) {
      var req = indexedDB.open(DB, 1);
      req.onupgradeneeded = function () { req.result.createObjectStore(STORE, { keyPath: 'phone' }); };
      req.onsuccess = function () { resolve(req.result); };
      req.onerror = function () { reject(req.error); };
    });
  }
  function tx(mode, f) {
    return openDB().then(function (db) {
      return new Promise(function (resolve, reject) {
        var t = db.transaction(STORE, mode);
        var req = f(t.objectStore(STORE));
        t.oncomplete = function () { db.close(); resolve(req && req.result); };
        t.onerror = function () { db.close(); reject(t.error); };
      });
    });
  }
  var load = function () { return tx('readonly', function (s) { return s.get(PHONE); }); };
  var save = function (r) { return tx('readwrite', function (s) { return s.put(r); }); };
  var forget = function () { return tx('readwrite', function (s) { return s.delete(PHONE); }); };

  // --- JWS ---------------------------------------------------------------
  function b64u(bytes) {
    var s = '';
    new Uint8Array(bytes).forEach(function (b) { s += String.fromCharCode(b); });
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function b64uJSON(v) { return b64u(enc.encode(JSON.stringify(v))); }
  function sign(key, header, claims) {
    var input = b64uJSON(header) + '.' + b64uJSON(claims);
    return crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, key, enc.encode(input))
      .then(function (sig) { return input + '.' + b64u(sig); }); // sig: raw R‖S, 64 bytes
  }
  function jti() { return b64u(crypto.getRandomValues(new Uint8Array(16))); }
  function now() { return Math.floor(Date.now() / 1000); }
  function baseClaims() {
    var iat = now();
    return { iss: rec.deviceId, aud: rec.audience, iat: iat, exp: iat + LIFETIME, jti: jti() };
  }
  function assertion() {
    return sign(rec.privateKey, { alg: 'ES256', kid: rec.deviceId, typ: 'JWT' }, baseClaims());
  }
  function normalize(code) {
    return code.replace(/[-\s]/g, '').toUpperCase().replace(/O/g, '0').replace(/[IL]/g, '1');
  }

  // --- HTTP --------------------------------------------------------------
  function call(method, path, body, bearer, signal) {
    var h = { Accept: 'application/json' };
    if (body !== undefined) h['Content-Type'] = 'application/json';
    if (bearer) h.Authorization = 'Bearer ' + bearer;
    return fetch(path, { method: method, headers: h, cache: 'no-store', signal: signal,
      body: body === undefined ? undefined : JSON.stringify(body) })
      .then(function (r) {
        return r.text().then(function (t) {
          var j = {};
          try { j = t ? JSON.parse(t) : {}; } catch (e) { j = {}; }
          return { status: r.status, ok: r.ok, body: j, retryAfter: Number(r.headers.get('Retry-After')) || 0 };
        });
      });
  }
  function authed(method, path, body, signal) {
    return assertion().then(function (a) { return call(method, path, body, a, signal); });
  }
  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  // --- screens -----------------------------------------------------------
  function setState(s) { root.dataset.state = s; }
  function showError(msg) {
    var e = $('phone-error');
    e.textContent = msg || '';
    e.hidden = !msg;
  }

  function start() {
    clock();
    setInterval(clock, 1000);
    setInterval(tickCards, 1000);
    if (!window.isSecureContext || !window.crypto || !crypto.subtle || !window.indexedDB) {
      setState('unsupported');
      return;
    }
    $('link-form').addEventListener('submit', linkPhone);
    $('unlink-button').addEventListener('click', unlink);
    load().then(function (r) {
      if (r && r.deviceId) {
        rec = r;
        linked();
      } else {
        unlinked();
      }
    }).catch(function (e) {
      showError('Could not open this phone\'s key store: ' + e);
      unlinked();
    });
  }

  function clock() {
    var d = new Date();
    $('phone-clock').textContent = String(d.getHours()).padStart(2, '0') + ':' + String(d.getMinutes()).padStart(2, '0');
  }

  function unlinked() {
    setState('unlinked');
    var n = $('device-name');
    if (!n.value) n.value = PHONE === 'default' ? 'Demo phone' : 'Demo phone ' + PHONE;
  }

  function linkPhone(ev) {
    ev.preventDefault();
    var code = $('code').value.trim(), name = $('device-name').value.trim();
    var status = $('link-status');
    showError('');
    if (normalize(code).length !== 8) { status.textContent = 'Type the 8-character code shown on the site, like K7QD-9XMW.'; $('code').focus(); return; }
    if (!name) { status.textContent = 'Give this phone a name.'; $('device-name').focus(); return; }
    $('phone-link-button').disabled = true;
    status.textContent = 'Linking…';
    var keys;
    crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify'])
      .then(function (k) { keys = k; return crypto.subtle.exportKey('jwk', k.publicKey); })
      .then(function (jwk) {
        return sign(keys.privateKey, { alg: 'ES256', typ: 'JWT' }, { code: normalize(code), iat: now() }).then(function (proof) {
          return call('POST', '/v1/devices', {
            code: code, name: name, platform: 'other',
            public_key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y },
            push: { provider: 'none' }, proof: proof
          });
        });
      })
      .then(function (res) {
        if (!res.ok) {
          var msg = res.body.detail || ('error ' + res.status);
          if (res.body.code === 'invalid_code') msg = 'That code is wrong, used or expired. Check it, or get a new code on the site.';
          if (res.body.code === 'rate_limited') msg = 'Too many wrong codes from here: wait a few minutes.';
          status.textContent = msg;
          return;
        }
        rec = { phone: PHONE, privateKey: keys.privateKey, publicKey: keys.publicKey, deviceId: res.body.device_id,
          audience: res.body.audience, userId: res.body.user_id, name: name };
        return save(rec).then(function () {
          status.textContent = '';
          $('code').value = '';
          linked();
        });
      })
      .catch(function (e) { status.textContent = 'Could not link: ' + e; })
      .then(function () { $('phone-link-button').disabled = false; });
  }

  function linked() {
    setState('linked');
    showError('');
    $('device-name-label').textContent = rec.name;
    generation++;
    loop(generation);
  }

  // lost: the server no longer accepts this phone (unlinked elsewhere, or
  // retired when another phone linked). Its key is useless: forget it.
  function lost(msg) {
    generation++;
    rec = null;
    clearCards();
    forget().catch(function () { /* gone already */ });
    showError(msg);
    unlinked();
  }

  function unlink() {
    if (!rec) return;
    $('unlink-button').disabled = true;
    if (aborter) aborter.abort();
    var g = ++generation;
    authed('DELETE', '/v1/device').then(function (res) {
      if (!res.ok && res.status !== 401) throw new Error(res.body.detail || ('error ' + res.status));
      if (g !== generation) return;
      rec = null;
      clearCards();
      return forget().then(unlinked);
    }).catch(function (e) {
      showError('Could not unlink: ' + e.message);
      linked();
    }).then(function () { $('unlink-button').disabled = false; });
  }

  // loop long-polls the pending challenges while none is shown. A long
  // poll ends when something is pending, never when the list empties (a
  // request approved by email, or expired), so while challenges are shown
  // it polls every 2 s without waiting instead (well under the 120
  // requests a minute a device may make).
  function loop(g) {
    var backoff = 1000, showing = false;
    function next() {
      if (g !== generation) return;
      aborter = new AbortController();
      authed('GET', '/v1/device/challenges' + (showing ? '' : '?wait=25'), undefined, aborter.signal).then(function (res) {
        if (g !== generation) return;
        if (res.status === 401) return lost('This phone is no longer linked: it was unlinked, or another phone replaced it.');
        if (res.status === 429) {
          $('poll-status').textContent = 'Slowing down (too many requests).';
          return sleep((res.retryAfter || 5) * 1000).then(next);
        }
        if (!res.ok) throw new Error(res.body.detail || ('error ' + res.status));
        backoff = 1000;
        $('poll-status').textContent = '';
        var list = res.body.challenges || [];
        render(list);
        showing = list.length > 0;
        return sleep(showing ? 2000 : 0).then(next);
      }).catch(function (e) {
        if (g !== generation) return;
        $('poll-status').textContent = 'Offline: retrying…';
        sleep(backoff).then(next);
        backoff = Math.min(backoff * 2, 15000);
      });
    }
    next();
  }

  // --- challenges --------------------------------------------------------
  function clearCards() {
    cards.forEach(function (li) { li.remove(); });
    cards.clear();
    $('no-challenges').hidden = false;
  }

  function render(list) {
    var seen = new Set();
    list.forEach(function (c) {
      seen.add(c.id);
      if (!cards.has(c.id)) {
        var li = card(c);
        cards.set(c.id, li);
        $('challenges').appendChild(li);
      }
    });
    cards.forEach(function (li, id) {
      if (seen.has(id) || li.dataset.state === 'sending') return;
      // Decided here: keep the outcome on screen a few seconds. Else it was
      // decided elsewhere (email) or expired: drop it.
      if (li.dataset.state === 'pending' || Date.now() - Number(li.dataset.decidedAt || 0) > 4000) {
        li.remove();
        cards.delete(id);
      }
    });
    $('no-challenges').hidden = cards.size > 0;
  }

  function shortUA(ua) {
    var m = /(Firefox|Edg|Chrome|Safari|curl|Go-http-client)\/[\d.]+/.exec(ua || '');
    return m ? m[0] : (ua || '').slice(0, 40);
  }

  function card(c) {
    var li = $('challenge-template').content.firstElementChild.cloneNode(true);
    li.id = 'challenge-' + c.id;
    li.dataset.id = c.id;
    li.dataset.action = c.action;
    li.dataset.expires = c.expires_at;
    li.dataset.numberMatching = String(!!c.number_matching);
    li.querySelector('.challenge-title').textContent = TITLES[c.action] || ('Approve ' + c.action.replace(/[_.-]/g, ' ') + '?');
    var dl = li.querySelector('.challenge-context');
    Object.keys(c.context || {}).forEach(function (k) {
      var dt = document.createElement('dt'), dd = document.createElement('dd');
      dt.textContent = k;                 // always text, never HTML
      dd.textContent = String(c.context[k]);
      dl.appendChild(dt);
      dl.appendChild(dd);
    });
    var r = c.requester || {};
    var when = new Date(c.created_at);
    li.querySelector('.challenge-meta').textContent = 'Requested ' + when.toLocaleTimeString() +
      ' from ' + (r.ip || 'an unknown address') + (r.user_agent ? ' · ' + shortUA(r.user_agent) : '');
    var input = li.querySelector('.number-input');
    if (c.number_matching) {
      li.querySelector('.challenge-number').hidden = false;
      input.id = 'number-' + c.id;
      li.querySelector('.number-label').htmlFor = input.id;
    }
    li.querySelector('.approve').addEventListener('click', function () { decide(c, li, 'approve', false); });
    li.querySelector('.deny').addEventListener('click', function () { decide(c, li, 'deny', false); });
    li.querySelector('.fraud').addEventListener('click', function () { decide(c, li, 'deny', true); });
    tickCard(li);
    return li;
  }

  function tickCard(li) {
    var left = Math.max(0, Math.round((Date.parse(li.dataset.expires) - Date.now()) / 1000));
    var el = li.querySelector('.challenge-expires');
    if (li.dataset.state === 'pending') el.textContent = 'Expires in ' + Math.floor(left / 60) + ':' + String(left % 60).padStart(2, '0');
    else el.textContent = '';
  }
  function tickCards() {
    cards.forEach(function (li, id) {
      var done = li.dataset.state !== 'pending' && li.dataset.state !== 'sending';
      if (done && Date.now() - Number(li.dataset.decidedAt || 0) > 5000) {
        li.remove();
        cards.delete(id);
      } else {
        tickCard(li);
      }
    });
    $('no-challenges').hidden = cards.size > 0;
  }

  function buttons(li, on) {
    li.querySelectorAll('button').forEach(function (b) { b.disabled = !on; });
  }

  function decide(c, li, dec, fraud) {
    var result = li.querySelector('.challenge-result');
    var input = li.querySelector('.number-input');
    var claims = baseClaims();
    claims.cid = c.id;
    claims.dec = dec;
    if (dec === 'approve' && c.number_matching) {
      var num = input.value.trim();
      if (!/^[0-9]{3,6}$/.test(num)) {
        result.textContent = 'Type the number shown on the site first.';
        input.focus();
        return;
      }
      claims.num = num;
    }
    if (fraud) claims.fraud = true;
    li.dataset.state = 'sending';
    buttons(li, false);
    result.textContent = 'Sending…';
    sign(rec.privateKey, { alg: 'ES256', kid: rec.deviceId }, claims).then(function (jws) {
      return call('POST', '/v1/device/challenges/' + encodeURIComponent(c.id) + '/decision', { response: jws });
    }).then(function (res) {
      if (res.ok) {
        li.dataset.state = res.body.status;
        li.dataset.decidedAt = String(Date.now());
        result.textContent = res.body.status === 'approved' ? 'Approved.' :
          (fraud ? 'Denied and reported. New requests on your account are paused for 15 minutes.' : 'Denied.');
        return;
      }
      var code = res.body.code;
      if (code === 'number_mismatch') {
        li.dataset.state = 'pending';
        buttons(li, true);
        result.textContent = 'That number doesn\'t match the one on the site. Try again.';
        input.select();
        return;
      }
      li.dataset.decidedAt = String(Date.now());
      if (code === 'expired') { li.dataset.state = 'expired'; result.textContent = 'This request expired.'; return; }
      if (code === 'not_pending') { li.dataset.state = res.body.current_status || 'ended'; result.textContent = 'Already ' + (res.body.current_status || 'ended') + '.'; return; }
      if (res.status === 401) return lost('This phone is no longer linked.');
      li.dataset.state = 'pending';
      buttons(li, true);
      result.textContent = 'Could not send: ' + (res.body.detail || ('error ' + res.status));
    }).catch(function (e) {
      li.dataset.state = 'pending';
      buttons(li, true);
      result.textContent = 'Could not send: ' + e;
    });
  }

  start();
})();

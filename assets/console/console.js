// cohort console: the filter builder and its live preview. Loaded from the console's own origin (the
// Content-Security-Policy allows no inline script); it only enhances the group form: the server checks
// every filter again, with the API's validation, when it previews and when it saves.
(function () {
  'use strict';

  var UNARY = ['isEmpty', 'isNotEmpty', 'isNull', 'isNotNull'];
  var LISTS = ['in', 'notIn', 'hasAny', 'hasAll'];
  var SPANS = ['withinLast', 'notWithinLast'];
  var RELATIVE = ['before', 'after'];
  var UNITS = ['minutes', 'hours', 'days', 'weeks', 'months'];
  var NUMBER = /^-?\d+(\.\d+)?([eE][+-]?\d+)?$/;
  var INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}:\d{2})$/;
  var SPAN = /^(\d+)\s*(minutes|hours|days|weeks|months)(\s+(ago|from now))?$/;
  var CUSTOM_KEY = /^[A-Za-z0-9_.-]{1,128}$/;
  var NEW_CUSTOM = 'custom:new'; // no field name holds a colon

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  function select(cls, options, chosen) {
    var s = el('select', { 'class': cls });
    options.forEach(function (o) {
      var opt = el('option', { value: o[0], text: o[1] });
      if (o[0] === chosen) { opt.selected = true; }
      s.appendChild(opt);
    });
    return s;
  }

  function builder(root) {
    var catalogue = JSON.parse(root.getAttribute('data-catalogue'));
    var csrf = root.getAttribute('data-csrf');
    var previewUrl = root.getAttribute('data-preview');
    var hidden = document.getElementById('filter-json');
    var site = document.getElementById('site');
    var problems = document.getElementById('builder-problems');
    var fields = {};
    catalogue.fields.forEach(function (f) { fields[f.name] = f; });
    var names = catalogue.fields.map(function (f) { return f.name; });

    // A field the catalogue does not list (an undeclared custom.<key>) is a string.
    function field(name) {
      return fields[name] || { name: name, type: 'string', values: [], operators: catalogue.customOperators };
    }

    // Lists a saved filter's undeclared custom field beside the catalogue's.
    function known(name) {
      if (!fields[name]) {
        fields[name] = field(name);
        names.push(name);
      }
    }

    // The tree being edited: groups {operator, children} and conditions {field, operator, a, b, unit}
    // holding the text typed, converted to the filter's JSON (and checked) on every change.
    function fromJson(node) {
      if (node && Array.isArray(node.conditions)) {
        return { group: true, operator: node.operator === 'OR' ? 'OR' : 'AND',
                 children: node.conditions.map(fromJson) };
      }
      var c = { group: false, field: String(node.field || names[0]), operator: String(node.operator || ''),
                a: '', b: '', unit: 'days' };
      known(c.field);
      var v = node.value;
      if (v && typeof v === 'object' && !Array.isArray(v)) {
        if ('from' in v) { c.a = String(v.from); c.b = String(v.to); }
        if ('amount' in v) {
          c.unit = v.unit || 'days';
          c.a = SPANS.indexOf(c.operator) >= 0 ? String(v.amount)
            : v.amount + ' ' + c.unit + (v.direction === 'fromNow' ? ' from now' : ' ago');
        }
      } else if (Array.isArray(v)) {
        c.a = v.join(', ');
      } else if (v !== undefined && v !== null) {
        c.a = String(v);
      }
      return c;
    }

    var model;
    try { model = fromJson(JSON.parse(hidden.value)); } catch (e) { model = null; }
    if (!model || !model.group) { model = { group: true, operator: 'AND', children: [] }; }

    function scalar(f, raw, what) {
      var t = raw.trim();
      if (f.type === 'number') {
        if (!NUMBER.test(t)) { throw what + ' must be a number'; }
        return Number(t);
      }
      if (f.type === 'boolean') {
        if (t !== 'true' && t !== 'false') { throw what + ' must be true or false'; }
        return t === 'true';
      }
      if (f.type === 'datetime') {
        if (!INSTANT.test(t) || isNaN(Date.parse(t))) {
          throw what + ' must be an RFC 3339 instant, e.g. 2026-01-31T12:00:00Z';
        }
        return t;
      }
      if (f.type === 'enum' && f.values.indexOf(t) < 0) {
        throw what + ' must be one of ' + f.values.join(', ');
      }
      return raw;
    }

    // The condition's value, or a thrown sentence saying what is wrong with it.
    function value(c) {
      var f = field(c.field);
      var op = c.operator;
      if (UNARY.indexOf(op) >= 0) { return undefined; }
      if (SPANS.indexOf(op) >= 0) {
        if (!/^[1-9]\d*$/.test(c.a.trim())) { throw 'the amount must be a whole number above 0'; }
        return { amount: Number(c.a.trim()), unit: c.unit };
      }
      if (RELATIVE.indexOf(op) >= 0) {
        var t = c.a.trim();
        if (t === 'now') { return t; }
        var m = SPAN.exec(t);
        if (m) {
          var span = { amount: Number(m[1]), unit: m[2] };
          if (m[4] === 'from now') { span.direction = 'fromNow'; }
          return span;
        }
        return scalar({ type: 'datetime' }, t, 'the value (an instant, now, or e.g. 30 days ago)');
      }
      if (op === 'between') {
        return { from: scalar(f, c.a, 'from'), to: scalar(f, c.b, 'to') };
      }
      if (LISTS.indexOf(op) >= 0) {
        var items = c.a.split(',').map(function (s) { return s.trim(); })
          .filter(function (s) { return s !== ''; });
        if (items.length === 0) { throw 'list at least one value, separated by commas'; }
        var of = f.type === 'string_array' ? { type: 'string', values: [] } : f;
        return items.map(function (s) { return scalar(of, s, 'each value'); });
      }
      if (f.type === 'string_array' && (op === 'equals' || op === 'notEquals')) {
        return c.a.split(',').map(function (s) { return s.trim(); }).filter(function (s) { return s; });
      }
      if (op === 'matches' && c.a === '') { throw 'the pattern must not be empty'; }
      return scalar(f, c.a, 'the value');
    }

    // The filter's JSON and every problem found, each marked on its condition's row.
    function toJson(node, errors) {
      if (node.group) {
        if (node.children.length === 0) { errors.push('A group needs at least one condition'); }
        return { operator: node.operator, conditions: node.children.map(function (c) { return toJson(c, errors); }) };
      }
      var out = { field: node.field, operator: node.operator };
      node.problem = '';
      try {
        if (node.custom && !CUSTOM_KEY.test(node.key)) {
          throw 'the custom key must be 1 to 128 letters, digits, _, - or .';
        }
        var v = value(node);
        if (v !== undefined) { out.value = v; }
      } catch (e) {
        node.problem = String(e);
        errors.push(node.field + ': ' + node.problem);
      }
      return out;
    }

    var timer = null;
    var asked = 0;

    function changed() {
      var errors = [];
      var json = toJson(model, errors);
      root.querySelectorAll('.bcond').forEach(function (row) {
        var c = row.condition;
        row.classList.toggle('invalid', Boolean(c.problem));
        row.querySelector('.problem').textContent = c.problem || '';
      });
      problems.textContent = '';
      if (errors.length > 0) {
        hidden.value = '';
        // A preview still waiting to be asked, or asked and not yet answered, is of an earlier filter:
        // neither may overwrite this state.
        clearTimeout(timer);
        asked++;
        setPreview('—', '—', [], 'fix the filter to preview it');
        if (model.children.length === 0) { problems.appendChild(el('li', { text: 'Add a condition' })); }
        return;
      }
      hidden.value = JSON.stringify(json);
      setPreview(null, null, null, 'previewing…');
      clearTimeout(timer);
      timer = setTimeout(function () { preview(json); }, 250);
    }

    function setPreview(count, examined, sample, state) {
      if (count !== null) { document.getElementById('preview-count').textContent = count; }
      if (examined !== null) { document.getElementById('preview-examined').textContent = examined; }
      if (sample !== null) {
        var list = document.getElementById('preview-sample');
        list.textContent = '';
        sample.forEach(function (d) {
          var link = el('a', { href: '/console/devices/' + encodeURIComponent(d.id), text: d.id });
          var extra = [d.hostname, d.osType, d.status].filter(function (x) { return x; }).join(' · ');
          list.appendChild(el('li', {}, [link, document.createTextNode(extra ? ' ' + extra : '')]));
        });
      }
      document.getElementById('preview-state').textContent = state;
    }

    function preview(json) {
      var mine = ++asked;
      var body = { filterConditions: json };
      if (site && site.value.trim() !== '') { body.siteId = site.value.trim(); }
      fetch(previewUrl, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'content-type': 'application/json', 'x-csrf-token': csrf },
        body: JSON.stringify(body)
      }).then(function (r) {
        return r.json().then(function (answer) { return { ok: r.ok, answer: answer }; });
      }).then(function (res) {
        if (mine !== asked) { return; }
        if (res.ok) {
          var d = res.answer.data;
          setPreview(String(d.totalCount), String(d.examined), d.devices,
            'as of ' + d.evaluatedAt + ' (' + d.evaluatedFrom + ')');
          root.setAttribute('data-previewed', hidden.value);
        } else {
          setPreview('—', '—', [], 'not previewed');
          problems.textContent = '';
          problems.appendChild(el('li', { text: res.answer.message }));
          (res.answer.details || []).forEach(function (d) { problems.appendChild(el('li', { text: d })); });
        }
      }).catch(function () {
        if (mine === asked) { setPreview('—', '—', [], 'the preview did not answer'); }
      });
    }

    function conditionRow(c, parent) {
      var f = field(c.field);
      if (f.operators.indexOf(c.operator) < 0) { c.operator = f.operators[0]; }
      var row = el('div', { 'class': 'bcond' });
      row.condition = c;
      var options = names.map(function (n) { return [n, n + ' (' + field(n).type + ')']; });
      options.push([NEW_CUSTOM, 'custom.<key> (string)']);
      var fieldSel = select('field', options, c.custom ? NEW_CUSTOM : c.field);
      fieldSel.addEventListener('change', function () {
        c.custom = fieldSel.value === NEW_CUSTOM;
        c.key = '';
        c.field = c.custom ? 'custom.' : fieldSel.value;
        c.a = '';
        c.b = '';
        render();
      });
      var opSel = select('operator', f.operators.map(function (o) { return [o, o]; }), c.operator);
      opSel.addEventListener('change', function () { c.operator = opSel.value; render(); });
      row.appendChild(fieldSel);
      if (c.custom) {
        var key = el('input', { type: 'text', 'class': 'custom-key', placeholder: 'key' });
        key.value = c.key;
        key.addEventListener('input', function () { c.key = key.value.trim(); c.field = 'custom.' + c.key; changed(); });
        row.appendChild(key);
      }
      row.appendChild(opSel);
      var op = c.operator;
      function input(key, placeholder) {
        var i;
        if (f.type === 'enum' && LISTS.indexOf(op) < 0 && key === 'a') {
          i = select('value-a', [['', 'choose…']].concat(f.values.map(function (v) { return [v, v]; })), c.a);
          i.addEventListener('change', function () { c.a = i.value; changed(); });
        } else if (f.type === 'boolean' && key === 'a') {
          if (c.a === '') { c.a = 'true'; }
          i = select('value-a', [['true', 'true'], ['false', 'false']], c.a);
          i.addEventListener('change', function () { c.a = i.value; changed(); });
        } else {
          i = el('input', { type: 'text', 'class': 'value-' + key, placeholder: placeholder });
          i.value = c[key];
          i.addEventListener('input', function () { c[key] = i.value; changed(); });
        }
        row.appendChild(i);
      }
      if (UNARY.indexOf(op) >= 0) {
        // No value.
      } else if (SPANS.indexOf(op) >= 0) {
        input('a', 'amount');
        var unit = select('unit', UNITS.map(function (u) { return [u, u]; }), c.unit);
        unit.addEventListener('change', function () { c.unit = unit.value; changed(); });
        row.appendChild(unit);
      } else if (op === 'between') {
        input('a', 'from');
        row.appendChild(document.createTextNode('and'));
        input('b', 'to');
      } else if (LISTS.indexOf(op) >= 0) {
        input('a', f.type === 'enum' ? f.values.join(', ') : 'values, comma-separated');
      } else if (RELATIVE.indexOf(op) >= 0) {
        input('a', 'instant, now, or 30 days ago');
      } else {
        input('a', f.type === 'datetime' ? '2026-01-31T12:00:00Z' : 'value');
      }
      var remove = el('button', { type: 'button', 'class': 'small secondary remove', text: 'Remove' });
      remove.addEventListener('click', function () {
        parent.children.splice(parent.children.indexOf(c), 1);
        render();
      });
      row.appendChild(remove);
      row.appendChild(el('span', { 'class': 'problem' }));
      return row;
    }

    function groupBox(g, parent) {
      var box = el('div', { 'class': 'bgroup' });
      var head = el('div', { 'class': 'bhead' });
      var opSel = select('group-operator', [['AND', 'All of (AND)'], ['OR', 'Any of (OR)']], g.operator);
      opSel.addEventListener('change', function () { g.operator = opSel.value; changed(); });
      var addCond = el('button', { type: 'button', 'class': 'small add-cond', text: '+ condition' });
      addCond.addEventListener('click', function () {
        g.children.push({ group: false, field: names[0], operator: '', a: '', b: '', unit: 'days' });
        render();
      });
      var addGroup = el('button', { type: 'button', 'class': 'small secondary add-group', text: '+ group' });
      addGroup.addEventListener('click', function () {
        g.children.push({ group: true, operator: 'OR', children: [] });
        render();
      });
      if (!parent) { addCond.id = 'add-condition'; }
      head.appendChild(opSel);
      head.appendChild(addCond);
      head.appendChild(addGroup);
      if (parent) {
        var remove = el('button', { type: 'button', 'class': 'small secondary remove', text: 'Remove group' });
        remove.addEventListener('click', function () {
          parent.children.splice(parent.children.indexOf(g), 1);
          render();
        });
        head.appendChild(remove);
      }
      box.appendChild(head);
      g.children.forEach(function (c) {
        box.appendChild(c.group ? groupBox(c, g) : conditionRow(c, g));
      });
      return box;
    }

    function render() {
      root.textContent = '';
      root.appendChild(groupBox(model, null));
      changed();
    }

    if (site) { site.addEventListener('input', changed); }
    render();
  }

  var root = document.getElementById('builder');
  if (root) { builder(root); }
}());

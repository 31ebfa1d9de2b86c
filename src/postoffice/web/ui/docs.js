// A small interactive explorer over /api/v1/openapi.json: served by postoffice itself, so the
// API docs work with no internet connection. Values are shown with textContent only.
"use strict";

let csrfToken = "";

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function resolve(spec, schema) {
  if (schema && schema.$ref) return spec.components.schemas[schema.$ref.split("/").pop()];
  return schema;
}

function exampleFor(spec, schema) {
  schema = resolve(spec, schema) || {};
  if (schema.type === "object") {
    const example = {};
    for (const [name, property] of Object.entries(schema.properties || {})) {
      const resolved = resolve(spec, property) || {};
      example[name] = resolved.type === "boolean" ? true : resolved.type === "integer" ? 0 : "";
    }
    return JSON.stringify(example, null, 2);
  }
  return "";
}

function operationCard(spec, path, method, operation) {
  const card = node("details", "operation");
  const summary = node("summary");
  summary.append(node("span", `method ${method}`, method.toUpperCase()), node("span", "path", path),
    node("span", "muted", operation.summary || ""));
  card.append(summary);
  const body = node("div", "body");
  if (operation.description) body.append(node("p", "", operation.description));
  const form = node("form");
  const inputs = [];
  for (const parameter of operation.parameters || []) {
    const label = node("label");
    const input = node("input");
    input.name = parameter.name;
    input.dataset.in = parameter.in;
    input.placeholder = parameter.schema && parameter.schema.default !== undefined
      ? `default ${parameter.schema.default}` : (parameter.description || "");
    if (parameter.name === "X-CSRF-Token") input.value = csrfToken;
    label.append(node("span", "", `${parameter.name} (${parameter.in}${parameter.required ? ", required" : ""})`), input);
    inputs.push(input);
    form.append(label);
  }
  let textarea = null;
  if (operation.requestBody) {
    const schema = operation.requestBody.content["application/json"].schema;
    const label = node("label");
    textarea = node("textarea");
    textarea.value = exampleFor(spec, schema);
    label.append(node("span", "", "JSON body"), textarea);
    form.append(label);
  }
  const send = node("button", "primary small", "Send");
  send.type = "submit";
  const output = node("pre");
  output.hidden = true;
  form.append(send);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let url = path;
    const query = new URLSearchParams();
    const headers = {};
    for (const input of inputs) {
      if (!input.value) continue;
      if (input.dataset.in === "path") url = url.replace(`{${input.name}}`, encodeURIComponent(input.value));
      else if (input.dataset.in === "query") query.set(input.name, input.value);
      else if (input.dataset.in === "header") headers[input.name] = input.value;
    }
    if (String(query)) url += `?${query}`;
    const options = { method: method.toUpperCase(), headers, credentials: "same-origin" };
    if (textarea) { options.body = textarea.value; headers["Content-Type"] = "application/json"; }
    output.hidden = false;
    if (path === "/api/v1/events") {
      output.textContent = `GET ${url}\n\nAn event stream: open it with EventSource, or curl -N.`;
      return;
    }
    try {
      const response = await fetch(url, options);
      const type = response.headers.get("content-type") || "";
      let text = await response.text();
      if (type.includes("json")) { try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (error) { /* as is */ } }
      if (text.length > 20000) text = `${text.slice(0, 20000)}\n…`;
      output.textContent = `${options.method} ${url}\n${response.status} ${response.statusText}  ${type}\n\n${text}`;
    } catch (error) {
      output.textContent = String(error);
    }
  });
  const responses = node("p", "responses",
    `Responses: ${Object.entries(operation.responses).map(([code, r]) => `${code} ${r.description}`).join(" · ")}`);
  body.append(form, responses, output);
  card.append(body);
  return card;
}

async function main() {
  const session = await fetch("/api/v1/session", { credentials: "same-origin" });
  if (session.ok) csrfToken = (await session.json()).csrf_token;
  const spec = await (await fetch("/api/v1/openapi.json")).json();
  document.getElementById("version").textContent = `v${spec.info.version}`;
  document.getElementById("intro").textContent = `${spec.info.description} ` +
    (session.ok ? "Calls below run as you." : "Log in on the main page first to try calls.");
  const container = document.getElementById("operations");
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      container.append(operationCard(spec, path, method, operation));
    }
  }
}

main();

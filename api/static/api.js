// Talking to the xmodal service: one fetch wrapper and the API key.
//
// The key travels twice on purpose: as `Authorization: Bearer` on API calls, and as a cookie so
// that the thumbnails and sounds the page shows (plain <img>/<audio> URLs) load too.

const KEY_COOKIE = "xmodal_key";
// Characters a cookie value may hold without quoting (RFC 6265 cookie-octet).
const COOKIE_SAFE = /^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]+$/;

let apiKey = readKeyCookie();

/** A refused or failed call; `message` is fit to show, `status` is 0 when the server was not reached. */
export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/**
 * GET `path`, or POST `json` or a FormData `form` to it; resolves to the answer's JSON.
 * Rejects with an ApiError carrying the server's `{"error": {"message"}}` when there is one, or
 * with the AbortError of `signal`.
 */
export async function callApi(path, { json, form, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;  // the browser writes the multipart boundary
  }
  let response;
  try {
    response = await fetch(path, { method: body === undefined ? "GET" : "POST", headers, body, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    // The server also closes the connection on an upload over its limit without reading it, and
    // the browser may then report no answer at all rather than the 413.
    const message = form !== undefined
      ? "The upload did not get through: the server may have stopped, or refused a file this large."
      : "Could not reach the server. Is it still running?";
    throw new ApiError(message, 0, "network");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (error) {
    if (error.name === "AbortError") throw error;
    data = null;  // an error page from a proxy, say: the status line still says what happened
  }
  if (!response.ok) {
    const detail = data && typeof data.error === "object" && data.error ? data.error : {};
    const message = typeof detail.message === "string" && detail.message
      ? detail.message
      : `The server answered ${`${response.status} ${response.statusText}`.trim()}.`;
    throw new ApiError(message, response.status, detail.code);
  }
  if (data === null || typeof data !== "object") {
    throw new ApiError("The server sent an answer this page cannot read.", response.status, "invalid");
  }
  return data;
}

export function currentApiKey() {
  return apiKey;
}

/**
 * Use `key` from now on and keep it in a session cookie for this site.
 * Throws an Error (with a message to show) for a key that a cookie cannot hold.
 */
export function saveApiKey(key) {
  if (!COOKIE_SAFE.test(key)) {
    throw new Error("An API key cannot hold spaces, commas, semicolons, quotes or backslashes.");
  }
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `${KEY_COOKIE}=${key}; SameSite=Strict; path=/${secure}`;
  apiKey = key;
}

function readKeyCookie() {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === KEY_COOKIE) return rest.join("=");
  }
  return "";
}

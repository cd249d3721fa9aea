// Result cards. Names, paths and URLs from the server reach the DOM only through textContent,
// attributes and properties, never innerHTML, so a file named like markup stays text.

/** An element with an optional class and text. */
export function make(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = String(text);
  return element;
}

export function formatScore(score) {
  return Number.isFinite(score) ? score.toFixed(3) : "–";
}

/**
 * One result as an <li>. The card is a button for "more like this" (`onMore(item)`, with `name`
 * filled in); a sound also gets a player that starts at its best-matching segment.
 */
export function createResult(item, onMore) {
  const name = String(item.name ?? item.path ?? `item ${item.id}`);
  const score = Number(item.score);
  const isSound = item.modality === "audio";
  const card = make("li", "result");
  card.dataset.id = String(item.id);
  card.dataset.modality = String(item.modality);
  card.dataset.score = String(item.score);
  if (item.generated === true) card.dataset.generated = "true";
  if (item.path) card.title = String(item.path);

  const open = make("button", "open");
  open.type = "button";
  open.setAttribute("aria-label",
    `More like this: ${name}, ${item.generated === true ? "generated " : ""}${isSound ? "sound" : "image"}, ` +
    `score ${formatScore(score)}`);
  const thumb = make("img", "thumb");
  thumb.alt = name;
  thumb.loading = "lazy";
  thumb.decoding = "async";
  if (item.thumbnail_url) thumb.src = String(item.thumbnail_url);
  const meta = make("span", "meta");
  meta.append(make("span", "badge", isSound ? "sound" : "image"));
  // A picture xmodal drew and the user kept: never passed off as their own media.
  if (item.generated === true) meta.append(make("span", "badge generated-badge", "generated"));
  meta.append(make("span", "score", formatScore(score)));
  const bar = make("span", "score-bar");
  const fill = make("span");
  fill.style.width = `${Math.round(Math.min(Math.max(Number.isFinite(score) ? score : 0, 0), 1) * 100)}%`;
  bar.append(fill);
  open.append(thumb, meta, bar, make("span", "name", name));
  card.append(open);
  if (isSound && item.media_url) card.append(createSoundPlayer(item, name));

  // The whole card asks for "more like this" (a bigger target for the mouse), except its player
  // and the segment button; the keyboard reaches the same thing through the button.
  card.addEventListener("click", (event) => {
    if (event.target.closest("audio, .segment")) return;
    onMore({ ...item, name });
  });
  return card;
}

function createSoundPlayer(item, name) {
  const box = make("div", "sound");
  const audio = make("audio");
  audio.controls = true;
  audio.preload = "none";
  audio.src = String(item.media_url);
  audio.setAttribute("aria-label", `Play ${name}`);
  const segment = item.segment && Number.isFinite(Number(item.segment.start)) ? item.segment : null;
  if (segment) {
    const start = Number(segment.start);
    const end = Number.isFinite(Number(segment.end)) ? Number(segment.end) : start;
    let played = false;
    // The first play starts at the best-matching part; later plays are the user's own.
    audio.addEventListener("play", () => {
      if (played) return;
      played = true;
      if (audio.currentTime < 0.05) seek(audio, start);
    });
    const jump = make("button", "segment", `best match ${start.toFixed(1)}–${end.toFixed(1)} s`);
    jump.type = "button";
    jump.setAttribute("aria-label", `Play ${name} from its best match, ${start.toFixed(1)} to ${end.toFixed(1)} seconds`);
    jump.addEventListener("click", () => {
      played = true;
      seek(audio, start);
      // A rejected play (the file failed to load, say) shows in the player itself.
      audio.play().catch(() => {});
    });
    box.append(jump);
  }
  box.append(audio);
  return box;
}

function seek(audio, seconds) {
  if (audio.readyState >= 1) {
    audio.currentTime = seconds;
  } else {
    audio.addEventListener("loadedmetadata", () => { audio.currentTime = seconds; }, { once: true });
  }
}

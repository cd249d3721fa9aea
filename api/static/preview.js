// The query preview above the results: the picture or sound being searched with, or the item
// whose "more like this" is shown. File and item names reach the DOM as text only.

import { make } from "/static/results.js";

export class QueryPreview {
  constructor(element) {
    this.element = element;
    this.objectUrl = null;  // of the query file; revoked when replaced so the file can be freed
  }

  hide() {
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = null;
    this.element.replaceChildren();
    this.element.hidden = true;
  }

  /** Show a picture or sound the user chose, dropped, pasted or recorded. */
  showFile(file, kind, label) {
    this.hide();
    this.objectUrl = URL.createObjectURL(file);
    let media;
    if (kind === "image") {
      media = make("img");
      media.alt = `Your picture: ${file.name}`;
    } else {
      media = make("audio");
      media.controls = true;
      media.setAttribute("aria-label", `Play your sound: ${file.name}`);
    }
    media.src = this.objectUrl;
    this.show(media, label || (kind === "image" ? "Searching with your picture" : "Searching with your sound"),
      file.name);
  }

  /** Show the result whose neighbours are being searched for. */
  showItem(item) {
    this.hide();
    const thumb = make("img");
    thumb.alt = item.name;
    if (item.thumbnail_url) thumb.src = String(item.thumbnail_url);
    this.show(thumb, "More like this", item.name);
  }

  show(media, kindText, nameText) {
    const text = make("span", "preview-text");
    text.append(make("span", "preview-kind", kindText), make("span", "preview-name", nameText));
    this.element.replaceChildren(media, text);
    this.element.hidden = false;
  }

  /** Scroll the preview into view when it is above the window (after clicking a result far down). */
  reveal() {
    if (!this.element.hidden && this.element.getBoundingClientRect().top < 0) {
      this.element.scrollIntoView({ block: "start" });
    }
  }
}

// Upload, then follow the job with EventSource exactly as the seed's example does:
// every message is the job snapshot; the stream ends after the terminal event.
const form = document.getElementById("upload");
const bar = document.getElementById("bar");
const statusLine = document.getElementById("status");
const resultBox = document.getElementById("result");

function show(snapshot) {
  bar.value = snapshot.progress;
  statusLine.className = snapshot.status === "failed" ? "error" : "";
  statusLine.textContent = `${snapshot.progress}% — ${snapshot.stage}: ${snapshot.message}`;
}

function follow(progressUrl) {
  const source = new EventSource(progressUrl);
  source.onmessage = (event) => {
    const snapshot = JSON.parse(event.data);
    show(snapshot);
    if (["completed", "failed", "cancelled"].includes(snapshot.status)) {
      source.close();
      resultBox.hidden = false;
      resultBox.textContent = JSON.stringify(snapshot.result || snapshot.error, null, 2);
    }
  };
  source.onerror = () => { statusLine.textContent += " (reconnecting…)"; };
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = document.getElementById("token").value;
  const body = new FormData();
  body.append("file", document.getElementById("file").files[0]);
  resultBox.hidden = true;
  bar.value = 0;
  statusLine.textContent = "Uploading…";
  const response = await fetch(`/tokens/${encodeURIComponent(token)}/upload-audio`, { method: "POST", body });
  const answer = await response.json();
  if (response.status !== 202) {
    statusLine.className = "error";
    statusLine.textContent = `${response.status} ${answer.code}: ${answer.detail}`;
    return;
  }
  statusLine.textContent = `Queued as ${answer.job_id}`;
  follow(answer.progress_url);
});

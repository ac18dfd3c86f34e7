// Korean and English labels, chosen from the browser's language (`?lang=ko|en` overrides).
// Elements with data-i18n="key" get their text from here at load; the rest is set by progress.js.
// Stage labels ("stage.<name>") come from CONTRACT (/contract.js), the server's stage table.
"use strict";

const MESSAGES = {
  en: {
    title: "YouSync — dubbing analysis",
    skipToProgress: "Skip to progress",
    lead: "Upload or record a dubbing take and follow its analysis live.",
    uploadHeading: "1. Your recording",
    token: "Token",
    tokenHelp: "Letters, digits, _ and -, up to 64.",
    chooseFile: "Choose an audio file",
    dropHint: "or drop it here",
    record: "Record from microphone",
    stopRecording: "Stop recording",
    recording: "Recording… {time}",
    nothingChosen: "No file chosen yet.",
    chosen: "Ready to upload: {name} ({size})",
    recorded: "Recorded {time} from the microphone ({size})",
    micUnavailable: "The microphone is not available: {error}",
    settings: "Settings",
    apiKey: "API key (only when the server requires one)",
    upload: "Upload",
    noFile: "Choose, drop or record a file first.",
    badToken: "The token may only hold letters, digits, _ and - (1–64).",
    progressHeading: "2. Progress",
    uploadBar: "Sending the file",
    uploadSent: "{sent} of {total}",
    uploadDone: "Sent {total}",
    uploadFailed: "The upload failed: {error}",
    networkError: "network error",
    jobBar: "Analysis",
    "status.idle": "",
    "status.queued": "Queued",
    "status.processing": "Processing",
    "status.completed": "Completed",
    "status.failed": "Failed",
    "status.cancelled": "Cancelled",
    "status.expired": "Expired",
    "status.deleted": "Deleted",
    eta: "about {time} left",
    stalled: "No progress for a while — still waiting for the worker.",
    "conn.connecting": "Connecting…",
    "conn.live": "Live",
    "conn.reconnecting": "Connection lost — reconnecting…",
    "conn.done": "",
    cancel: "Cancel",
    retry: "Retry",
    cancelFailed: "Could not cancel: {error}",
    retryFailed: "Could not retry: {error}",
    errorHeading: "Something went wrong",
    retryable: "You can try again.",
    notRetryable: "Trying again will not help with this file.",
    cancelledText: "The analysis was cancelled.",
    expired: "This job is no longer available (it expired).",
    resultHeading: "Result",
    warningsHeading: "Quality",
    noWarnings: "No quality problems found.",
    rawJson: "Raw JSON",
    "r.duration": "Duration",
    "r.loudness": "Loudness",
    "r.peak": "Peak",
    "r.pitch": "Pitch",
    "r.sync": "Sync score",
    "r.offset": "Timing offset",
    "r.silence": "Silence",
    "r.clipping": "Clipping",
    "r.voiced": "Voiced segments",
    "r.stored": "Stored as",
    "w.too_quiet": "The recording is very quiet. Move closer to the microphone.",
    "w.clipped": "The recording is distorted (clipping). Speak a little softer or move back.",
    "w.mostly_silence": "The recording is mostly silence.",
    "w.too_short": "The recording is very short.",
    early: "early",
    late: "late",
    recentHeading: "Recent jobs in this browser",
    recentEmpty: "No jobs yet.",
    clearRecent: "Clear list",
    seconds: "{n} s",
    minutes: "{m} min {s} s",
  },
  ko: {
    title: "YouSync — 더빙 분석",
    skipToProgress: "진행 상황으로 건너뛰기",
    lead: "더빙 녹음을 올리거나 바로 녹음하고, 분석 과정을 실시간으로 확인하세요.",
    uploadHeading: "1. 녹음 파일",
    token: "토큰",
    tokenHelp: "영문, 숫자, _ 와 - 만 사용, 최대 64자.",
    chooseFile: "오디오 파일 선택",
    dropHint: "또는 여기에 끌어다 놓기",
    record: "마이크로 녹음",
    stopRecording: "녹음 중지",
    recording: "녹음 중… {time}",
    nothingChosen: "아직 선택한 파일이 없습니다.",
    chosen: "업로드 준비 완료: {name} ({size})",
    recorded: "마이크 녹음 {time} ({size})",
    micUnavailable: "마이크를 사용할 수 없습니다: {error}",
    settings: "설정",
    apiKey: "API 키 (서버가 요구할 때만)",
    upload: "업로드",
    noFile: "먼저 파일을 선택하거나, 끌어다 놓거나, 녹음하세요.",
    badToken: "토큰에는 영문, 숫자, _ 와 - 만 쓸 수 있습니다 (1–64자).",
    progressHeading: "2. 진행 상황",
    uploadBar: "파일 전송",
    uploadSent: "{total} 중 {sent}",
    uploadDone: "{total} 전송 완료",
    uploadFailed: "업로드에 실패했습니다: {error}",
    networkError: "네트워크 오류",
    jobBar: "분석",
    "status.idle": "",
    "status.queued": "대기",
    "status.processing": "처리 중",
    "status.completed": "완료",
    "status.failed": "실패",
    "status.cancelled": "취소됨",
    "status.expired": "만료됨",
    "status.deleted": "삭제됨",
    eta: "약 {time} 남음",
    stalled: "한동안 진행이 없습니다 — 작업자를 기다리고 있습니다.",
    "conn.connecting": "연결 중…",
    "conn.live": "실시간 연결됨",
    "conn.reconnecting": "연결이 끊겼습니다 — 다시 연결하는 중…",
    "conn.done": "",
    cancel: "취소",
    retry: "다시 시도",
    cancelFailed: "취소하지 못했습니다: {error}",
    retryFailed: "다시 시도하지 못했습니다: {error}",
    errorHeading: "문제가 발생했습니다",
    retryable: "다시 시도할 수 있습니다.",
    notRetryable: "이 파일은 다시 시도해도 해결되지 않습니다.",
    cancelledText: "분석이 취소되었습니다.",
    expired: "이 작업은 더 이상 조회할 수 없습니다 (만료됨).",
    resultHeading: "결과",
    warningsHeading: "품질",
    noWarnings: "품질 문제가 없습니다.",
    rawJson: "원본 JSON",
    "r.duration": "길이",
    "r.loudness": "음량",
    "r.peak": "최대 레벨",
    "r.pitch": "음높이",
    "r.sync": "싱크 점수",
    "r.offset": "타이밍 차이",
    "r.silence": "무음 비율",
    "r.clipping": "클리핑",
    "r.voiced": "발화 구간",
    "r.stored": "저장 형식",
    "w.too_quiet": "녹음 소리가 너무 작습니다. 마이크에 더 가까이 대세요.",
    "w.clipped": "소리가 찌그러졌습니다(클리핑). 조금 작게 말하거나 마이크에서 떨어지세요.",
    "w.mostly_silence": "녹음의 대부분이 무음입니다.",
    "w.too_short": "녹음이 너무 짧습니다.",
    early: "빠름",
    late: "늦음",
    recentHeading: "이 브라우저의 최근 작업",
    recentEmpty: "아직 작업이 없습니다.",
    clearRecent: "목록 지우기",
    seconds: "{n}초",
    minutes: "{m}분 {s}초",
  },
};

for (const stage of CONTRACT.stages) {
  for (const [lang, label] of Object.entries(stage.labels)) {
    if (MESSAGES[lang]) MESSAGES[lang][`stage.${stage.name}`] = label;
  }
}

function pickLanguage() {
  const forced = new URLSearchParams(location.search).get("lang");
  if (forced && MESSAGES[forced]) return forced;
  const preferred = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
  for (const tag of preferred) {
    const base = String(tag).toLowerCase().split("-")[0];
    if (MESSAGES[base]) return base;
  }
  return "en";
}

const LANG = pickLanguage();

function t(key, params) {
  const text = (MESSAGES[LANG] && MESSAGES[LANG][key]) ?? MESSAGES.en[key] ?? key;
  return params ? text.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`)) : text;
}

function applyLabels(root = document) {
  document.documentElement.lang = LANG;
  for (const element of root.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
  document.title = t("title");
}

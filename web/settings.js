// The person's choices, remembered in this browser (localStorage).

const KEY = 'onebyte.settings';

const DEFAULTS = {
  throttle: 100,
  pauseWhenHidden: true,
  pauseOnBattery: true,
  backend: 'auto',
};

export function loadSettings() {
  try {
    return { ...DEFAULTS, ...JSON.parse(localStorage.getItem(KEY) ?? '{}') };
  } catch {
    return { ...DEFAULTS };
  }
}

export function saveSettings(settings) {
  try {
    localStorage.setItem(KEY, JSON.stringify(settings));
  } catch {
    // Private windows may refuse storage; the settings then last for this visit only.
  }
}

/** The demo's --help text (help.mjs is plain JavaScript so it answers before anything is installed). */
export declare const HELP: string;

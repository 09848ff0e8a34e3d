// The one part of dcmjs the UI uses: the DICOM data dictionary, for names in the tag panel.
declare module 'dcmjs' {
  interface DictionaryEntry {
    tag: string;
    vr: string;
    name: string;
    vm: string;
  }
  const dcmjs: {
    data: {
      DicomMetaDictionary: {
        dictionary: Record<string, DictionaryEntry | undefined>;
      };
    };
  };
  export default dcmjs;
}

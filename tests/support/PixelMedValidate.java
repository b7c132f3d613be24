// PixelMed's DicomSRValidator over many files in one JVM (its own main takes one file and costs seconds of
// start-up each): `java -cp pixelmed.jar PixelMedValidate.java a.dcm b.dcm`. Prints "== <file>" then the
// validator's report for each file.
public class PixelMedValidate {
    public static void main(String[] args) throws Exception {
        com.pixelmed.validate.DicomSRValidator validator = new com.pixelmed.validate.DicomSRValidator();
        for (String file : args) {
            System.out.println("== " + file);
            System.out.print(validator.validate(file));
            System.out.println();
        }
    }
}
